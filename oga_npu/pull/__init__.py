"""`oga-npu pull`: ready-made models from the Hugging Face hub into the store.

catalog.py   the catalog (catalog.toml): names -> repo, variant, target, release; fits here
hub.py       huggingface_hub: a repo's files at one commit, one file downloaded and checked
place.py     an OGA folder into the store atomically; its target, release, runs-here
run.py       pull(): SOURCE -> listing -> OGA folder | GGUF prepared | checkpoint prepared
"""

from .catalog import CatalogEntry, listing
from .run import PullEvent, PullRequest, PullResult, pull

__all__ = ["CatalogEntry", "PullEvent", "PullRequest", "PullResult", "listing", "pull"]

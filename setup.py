"""Build step only (everything else is in pyproject.toml): the recipes travel in the wheel
as oga_npu/recipes/*.toml, copied from the top-level recipes/, which stays the source of
truth. Editable installs read the checkout's recipes/ directly."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPyWithRecipes(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        dest = Path(self.build_lib) / "oga_npu" / "recipes"
        dest.mkdir(parents=True, exist_ok=True)
        for f in sorted((ROOT / "recipes").glob("*.toml")):
            shutil.copy2(f, dest / f.name)


setup(cmdclass={"build_py": BuildPyWithRecipes})

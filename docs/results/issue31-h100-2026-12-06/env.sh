# sourced by every call of the chain: installs once per machine, re-applies the overlay each call
T0=$(date +%s); el() { echo "[$(date +%H:%M:%S) +$(( $(date +%s) - T0 ))s] $*"; }
D=.dev31; W=/tmp/w; mkdir -p $W
if [ ! -f /tmp/site/.done ]; then
  el "fresh machine"; head -2 /etc/os-release; nproc; free -g | head -2; ldd --version | head -1
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  lscpu | grep -E "Model name"; grep -o -w -E "avx512_vnni|amx_tile|avx512f" /proc/cpuinfo | sort | uniq -c
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $D/whl/*.whl || exit 1
  dpkg -x $D/libvulkan1_*.deb / ; ldconfig
  mkdir -p /tmp/vk && tar xJf $D/vk.tar.xz -C /tmp/vk
  tar xJf $D/llama-src.tar.xz -C $W && tar xJf $D/tok.tar.xz -C $W
  touch /tmp/site/.done
fi
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
ICD=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json; [ -f $ICD ] && export VK_DRIVER_FILES=$ICD
cp -r $D/overlay/. . ; cp $D/scripts/*.py scripts/
git log --oneline -1 2>/dev/null | cut -c1-80
pack() { tar czf $OUT/$1.tgz -C $W out 2>/dev/null; ls -la $OUT; }
BVL="python3 scripts/bench_vs_llamacpp.py $W/out --work $W --llama-src $W/llama.cpp --tokenizer $W/tokenizer --no-native --small none --gpu --gpu-shapes llama-3.2-1b --gpu-recipes gguf-native --vulkan-prefix /tmp/vk/usr"

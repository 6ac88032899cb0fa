# sourced by every call: installs once per machine (marker /tmp/site/.done), re-applies the overlay each call
T0=$(date +%s); el() { echo "[$(date +%H:%M:%S) +$(( $(date +%s) - T0 ))s] $*"; }
D=.dev31; W=/tmp/w; mkdir -p $W
if [ ! -f /tmp/site/.done ]; then
  el "fresh machine: $(hostname)"; head -2 /etc/os-release; nproc; free -g | head -2; ldd --version | head -1
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  lscpu | grep -E "Model name"; grep -o -w -E "avx512_vnni|amx_tile|avx512f|avx512_bf16|avx512vbmi" /proc/cpuinfo | sort | uniq -c
  df -h / /tmp /dev/shm | cat
  python3 --version; cmake --version | head -1; ninja --version; cc --version | head -1; c++ --version | head -1
  mkdir -p /tmp/site && tar xJf $D/site.tar.xz -C /tmp || exit 1
  for f in $D/gl/*.deb; do dpkg -x $f /; done; ldconfig
  mkdir -p /tmp/vk && tar xJf $D/vk.tar.xz -C /tmp/vk
  tar xJf $D/llama-src.tar.xz -C $W && tar xJf $D/tok.tar.xz -C $W
  [ -f $D/bins.tar.xz ] && tar xJf $D/bins.tar.xz -C $W
  mkdir -p /tmp/ortinc && tar xJf $D/ortinc.tar.xz -C /tmp/ortinc
  touch /tmp/site/.done
fi
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 OGA_NPU_ORT_INCLUDE=/tmp/ortinc/onnxruntime-1.17.0/onnxruntime/core/session
ICD=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json; [ -f $ICD ] && export VK_DRIVER_FILES=$ICD
EGLV=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json; [ -f $EGLV ] && export __EGL_VENDOR_LIBRARY_FILENAMES=$EGLV
pack() { tar czf $OUT/$1.tgz -C $W out 2>/dev/null; ls -la $OUT; }

// oga-npu's onnxruntime custom-op library: a GGUF file's raw blocks multiplied by
// llama.cpp's own ggml CPU kernels (ggml-base + ggml-cpu, linked statically).
//
// Domain "oga_npu.ggml":
//   GgmlMatMul(A float[..., K], W0 uint8[N0, row_bytes], [W1], [W2]) -> Y float[..., N0+N1+N2]
//     attributes: types (ints, ggml type id per W), K (int).
//     Y = [A @ W0^T | A @ W1^T | A @ W2^T]: each W a GGUF tensor's rows as the file stores them.
//   GgmlGather(W uint8[V, row_bytes], ids int64[...]) -> Y float[..., K]
//     attributes: type (int), K (int). The rows dequantized by ggml's to_float.
//
// A weight ggml can repack for this CPU (Q4_0, Q4_K, IQ4_NL ... with AVX2) is repacked once
// when the kernel is created, into a buffer of ggml's CPU_REPACK type, as llama.cpp does at
// load; other weights are read where onnxruntime holds them (no copy). The multiplication is
// one ggml graph per call (ggml_mul_mat per weight, writing into its columns of Y), computed
// by one ggml CPU backend with a persistent thread pool, shared by every kernel and guarded
// by a mutex (one graph at a time per process).
//
// Environment: OGA_NPU_GGML_THREADS (default: physical cores, as llama.cpp), OGA_NPU_GGML_POLL (ggml's polling level, 0-100, default 50 as
// llama.cpp), OGA_NPU_GGML_NO_REPACK=1 (read every weight in place).

#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"
#undef ORT_API_MANUAL_INIT

#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <utility>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "ggml.h"

namespace {

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  long x = std::strtol(v, &end, 10);
  return (end && *end == 0 && x >= 0) ? static_cast<int>(x) : fallback;
}

// Physical cores (llama.cpp's default thread count), from sysfs; hardware threads if unknown.
int physical_cores() {
  std::set<std::pair<std::string, std::string>> cores;
  unsigned hw = std::thread::hardware_concurrency();
  for (unsigned i = 0; i < (hw ? hw : 1); ++i) {
    std::string base = "/sys/devices/system/cpu/cpu" + std::to_string(i) + "/topology/";
    std::ifstream pk(base + "physical_package_id"), co(base + "core_id");
    std::string a, b;
    if (!(pk >> a) || !(co >> b)) return hw ? static_cast<int>(hw) : 1;
    cores.insert({a, b});
  }
  return cores.empty() ? 1 : static_cast<int>(cores.size());
}

// After a weight is repacked, the pages onnxruntime mapped from the model's data file are not
// read again: drop them, as llama.cpp never keeps both. Only a read-only mapping of a file
// (found in /proc/self/maps) is touched: dropping anonymous or written pages would lose data.
void release_source(const void* data, size_t size) {
#ifdef __linux__
  uintptr_t a = reinterpret_cast<uintptr_t>(data);
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    unsigned long lo = 0, hi = 0;
    char perms[8] = {0};
    unsigned long off = 0, inode = 0;
    char dev[32] = {0}, path[512] = {0};
    if (std::sscanf(line.c_str(), "%lx-%lx %7s %lx %31s %lu %511s", &lo, &hi, perms, &off, dev, &inode, path) < 6) continue;
    if (a < lo || a >= hi) continue;
    if (inode == 0 || path[0] != '/' || perms[1] != '-') return;  // not a read-only file mapping
    uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
    uintptr_t start = (a + page - 1) & ~(page - 1);
    uintptr_t end = std::min<uintptr_t>((a + size) & ~(page - 1), hi);
    if (end > start) madvise(reinterpret_cast<void*>(start), end - start, MADV_DONTNEED);
    return;
  }
#else
  (void)data;
  (void)size;
#endif
}

// The one CPU backend and thread pool of the process.
struct Engine {
  ggml_backend_t backend = nullptr;
  ggml_threadpool_t pool = nullptr;
  ggml_backend_buffer_type_t repack = nullptr;
  int n_threads = 1;
  std::mutex mu;

  Engine() {
    ggml_cpu_init();
    backend = ggml_backend_cpu_init();
    if (!backend) throw std::runtime_error("ggml: no CPU backend");
    n_threads = env_int("OGA_NPU_GGML_THREADS", 0);
    if (n_threads == 0) n_threads = physical_cores();
    if (n_threads < 1) n_threads = 1;
    ggml_threadpool_params p = ggml_threadpool_params_default(n_threads);
    p.poll = static_cast<uint32_t>(env_int("OGA_NPU_GGML_POLL", 50));
    pool = ggml_threadpool_new(&p);
    ggml_backend_cpu_set_n_threads(backend, n_threads);
    if (pool) ggml_backend_cpu_set_threadpool(backend, pool);
    if (!env_int("OGA_NPU_GGML_NO_REPACK", 0)) repack = find_repack();
  }

  static ggml_backend_buffer_type_t find_repack() {
    ggml_backend_dev_t dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    if (!dev) return nullptr;
    auto reg = ggml_backend_dev_backend_reg(dev);
    auto get = (ggml_backend_dev_get_extra_bufts_t)ggml_backend_reg_get_proc_address(reg, "ggml_backend_dev_get_extra_bufts");
    if (!get) return nullptr;
    for (ggml_backend_buffer_type_t* b = get(dev); b && *b; ++b) {
      if (std::strcmp(ggml_backend_buft_name(*b), "CPU_REPACK") == 0) return *b;
    }
    return nullptr;
  }
};

Engine& engine() {
  static Engine e;  // created on first use (thread-safe static)
  return e;
}

// Metadata-only ggml context (tensor headers, graph), data pointers set by hand.
struct Ctx {
  ggml_context* ctx;
  explicit Ctx(size_t n_tensors) {
    ggml_init_params ip = {ggml_tensor_overhead() * n_tensors + ggml_graph_overhead_custom(16, false) + 1024, nullptr, true};
    ctx = ggml_init(ip);
    if (!ctx) throw std::runtime_error("ggml_init failed");
  }
  ~Ctx() { ggml_free(ctx); }
};

size_t row_bytes(ggml_type t, int64_t k) { return ggml_row_size(t, k); }

void check_type(int64_t t) {
  if (t < 0 || t >= GGML_TYPE_COUNT || ggml_get_type_traits(static_cast<ggml_type>(t))->blck_size == 0)
    throw std::runtime_error("oga_npu.ggml: unknown ggml type " + std::to_string(t));
}

// One weight: a ggml tensor [K, N] (ggml order) over the initializer, or its repacked copy.
struct Weight {
  ggml_type type;
  int64_t n = 0;
  const void* src = nullptr;  // onnxruntime's data (the key: a different pointer means a different weight)
  ggml_context* meta = nullptr;
  ggml_tensor* t = nullptr;
  ggml_backend_buffer_t buf = nullptr;

  ~Weight() {
    if (buf) ggml_backend_buffer_free(buf);
    if (meta) ggml_free(meta);
  }

  void bind(const void* data, int64_t k, int64_t rows) {
    if (data == src && t) return;
    if (buf) ggml_backend_buffer_free(buf), buf = nullptr;
    if (meta) ggml_free(meta), meta = nullptr;
    ggml_init_params ip = {ggml_tensor_overhead() * 4 + 1024, nullptr, true};
    meta = ggml_init(ip);
    t = ggml_new_tensor_2d(meta, type, k, rows);
    n = rows;
    src = data;
    Engine& e = engine();
    if (e.repack && try_repack(e, data)) return;
    t->data = const_cast<void*>(data);
  }

  bool try_repack(Engine& e, const void* data) {
    // llama.cpp's test (weight_buft_supported): a mul_mat with the weight in a buffer of the
    // extra type, asked of the CPU device.
    ggml_backend_buffer_t probe = ggml_backend_buft_alloc_buffer(e.repack, 0);
    if (!probe) return false;
    Ctx c(4);
    ggml_tensor* w = ggml_new_tensor_2d(c.ctx, type, t->ne[0], t->ne[1]);
    ggml_tensor* a = ggml_new_tensor_2d(c.ctx, GGML_TYPE_F32, t->ne[0], 1);
    w->buffer = probe;
    ggml_tensor* y = ggml_mul_mat(c.ctx, w, a);
    ggml_backend_dev_t dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    bool ok = ggml_backend_dev_supports_op(dev, y);
    w->buffer = nullptr;
    ggml_backend_buffer_free(probe);
    if (!ok) return false;
    size_t size = ggml_nbytes(t);
    buf = ggml_backend_buft_alloc_buffer(e.repack, size + ggml_backend_buft_get_alignment(e.repack));
    if (!buf) return false;
    if (ggml_backend_tensor_alloc(buf, t, ggml_backend_buffer_get_base(buf)) != GGML_STATUS_SUCCESS) {
      ggml_backend_buffer_free(buf), buf = nullptr;
      return false;
    }
    ggml_backend_tensor_set(t, data, 0, size);  // repacks
    release_source(data, size);
    return true;
  }
};

struct MatMulKernel {
  int64_t K = 0;
  std::vector<std::unique_ptr<Weight>> w;

  MatMulKernel(const OrtApi&, const OrtKernelInfo* info) {
    Ort::ConstKernelInfo ki(info);
    K = ki.GetAttribute<int64_t>("K");
    std::vector<int64_t> types = ki.GetAttributes<int64_t>("types");
    if (types.empty() || types.size() > 3) throw std::runtime_error("GgmlMatMul: 1 to 3 types");
    for (auto t : types) {
      check_type(t);
      if (K % ggml_blck_size(static_cast<ggml_type>(t)) != 0) throw std::runtime_error("GgmlMatMul: K not a whole number of blocks");
      auto x = std::make_unique<Weight>();
      x->type = static_cast<ggml_type>(t);
      w.push_back(std::move(x));
    }
    // constant weights (initializers) are bound, and repacked, now: at session creation
    for (size_t i = 0; i < w.size(); ++i) {
      int is_const = 0;
      Ort::ConstValue v = ki.GetTensorConstantInput(1 + i, &is_const);
      if (is_const) bind(i, v);
    }
  }

  void bind(size_t i, const Ort::ConstValue& v) {
    auto shape = v.GetTensorTypeAndShapeInfo().GetShape();
    int64_t bytes = 1;
    for (auto d : shape) bytes *= d;
    size_t rb = row_bytes(w[i]->type, K);
    int64_t rows = shape.empty() ? 0 : shape[0];
    if (rows <= 0 || static_cast<size_t>(bytes) != rb * static_cast<size_t>(rows))
      throw std::runtime_error("GgmlMatMul: W" + std::to_string(i) + " is not [N, " + std::to_string(rb) + "] bytes");
    w[i]->bind(v.GetTensorRawData(), K, rows);
  }

  void Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    Ort::ConstValue a = ctx.GetInput(0);
    auto ashape = a.GetTensorTypeAndShapeInfo().GetShape();
    if (ashape.empty() || ashape.back() != K) throw std::runtime_error("GgmlMatMul: A's last dimension is not K");
    int64_t m = 1;
    for (size_t d = 0; d + 1 < ashape.size(); ++d) m *= ashape[d];
    int64_t n_total = 0;
    for (size_t i = 0; i < w.size(); ++i) {
      Ort::ConstValue v = ctx.GetInput(1 + i);
      if (!v) throw std::runtime_error("GgmlMatMul: W" + std::to_string(i) + " missing");
      if (v.GetTensorRawData() != w[i]->src) bind(i, v);
      n_total += w[i]->n;
    }
    std::vector<int64_t> yshape(ashape);
    yshape.back() = n_total;
    Ort::UnownedValue y = ctx.GetOutput(0, yshape);
    float* out = y.GetTensorMutableData<float>();
    if (m == 0) return;
    const float* in = a.GetTensorData<float>();

    Engine& e = engine();
    std::lock_guard<std::mutex> lock(e.mu);
    Ctx c(4 + 2 * w.size());
    ggml_tensor* at = ggml_new_tensor_2d(c.ctx, GGML_TYPE_F32, K, m);
    at->data = const_cast<float*>(in);
    ggml_cgraph* g = ggml_new_graph_custom(c.ctx, 16, false);
    int64_t off = 0;
    for (auto& x : w) {
      ggml_tensor* r = ggml_mul_mat(c.ctx, x->t, at);  // [n_i, m]
      r->nb[1] = sizeof(float) * n_total;                // columns off..off+n_i of Y's rows
      r->nb[2] = r->nb[1] * m;
      r->nb[3] = r->nb[2];
      r->data = out + off;
      off += x->n;
      ggml_build_forward_expand(g, r);
    }
    if (ggml_backend_graph_compute(e.backend, g) != GGML_STATUS_SUCCESS) throw std::runtime_error("GgmlMatMul: ggml compute failed");
  }
};

struct GatherKernel {
  int64_t K = 0;
  ggml_type type;
  ggml_to_float_t to_float;

  GatherKernel(const OrtApi&, const OrtKernelInfo* info) {
    Ort::ConstKernelInfo ki(info);
    K = ki.GetAttribute<int64_t>("K");
    int64_t t = ki.GetAttribute<int64_t>("type");
    check_type(t);
    type = static_cast<ggml_type>(t);
    if (K % ggml_blck_size(type) != 0) throw std::runtime_error("GgmlGather: K not a whole number of blocks");
    to_float = ggml_get_type_traits(type)->to_float;
    if (!to_float) throw std::runtime_error("GgmlGather: type has no dequantization");
  }

  void Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    Ort::ConstValue wv = ctx.GetInput(0);
    Ort::ConstValue iv = ctx.GetInput(1);
    auto wshape = wv.GetTensorTypeAndShapeInfo().GetShape();
    size_t rb = row_bytes(type, K);
    int64_t bytes = 1;
    for (auto d : wshape) bytes *= d;
    int64_t rows = wshape.empty() ? 0 : wshape[0];
    if (rows <= 0 || static_cast<size_t>(bytes) != rb * static_cast<size_t>(rows)) throw std::runtime_error("GgmlGather: W is not [V, row_bytes]");
    auto ishape = iv.GetTensorTypeAndShapeInfo().GetShape();
    int64_t n = 1;
    for (auto d : ishape) n *= d;
    std::vector<int64_t> yshape(ishape);
    yshape.push_back(K);
    Ort::UnownedValue y = ctx.GetOutput(0, yshape);
    float* out = y.GetTensorMutableData<float>();
    const int64_t* ids = iv.GetTensorData<int64_t>();
    const uint8_t* base = static_cast<const uint8_t*>(wv.GetTensorRawData());
    for (int64_t i = 0; i < n; ++i) {
      int64_t id = ids[i];
      if (id < 0) id += rows;
      if (id < 0 || id >= rows) throw std::runtime_error("GgmlGather: index out of range");
      to_float(base + static_cast<size_t>(id) * rb, out + i * K, K);
    }
  }
};

struct MatMulOp : Ort::CustomOpBase<MatMulOp, MatMulKernel> {
  void* CreateKernel(const OrtApi& api, const OrtKernelInfo* info) const { return new MatMulKernel(api, info); }
  const char* GetName() const { return "GgmlMatMul"; }
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  size_t GetInputTypeCount() const { return 4; }
  ONNXTensorElementDataType GetInputType(size_t i) const {
    return i == 0 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT : ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const {
    return i < 2 ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

struct GatherOp : Ort::CustomOpBase<GatherOp, GatherKernel> {
  void* CreateKernel(const OrtApi& api, const OrtKernelInfo* info) const { return new GatherKernel(api, info); }
  const char* GetName() const { return "GgmlGather"; }
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  size_t GetInputTypeCount() const { return 2; }
  ONNXTensorElementDataType GetInputType(size_t i) const {
    return i == 0 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 : ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

}  // namespace

extern "C" {

__attribute__((visibility("default"))) OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  Ort::InitApi(api_base->GetApi(ORT_API_VERSION));
  static MatMulOp matmul;
  static GatherOp gather;
  static std::mutex mu;
  static std::vector<Ort::CustomOpDomain> keep;  // a domain must outlive the sessions using it
  std::lock_guard<std::mutex> lock(mu);
  try {
    Ort::CustomOpDomain domain{"oga_npu.ggml"};
    domain.Add(&matmul);
    domain.Add(&gather);
    Ort::UnownedSessionOptions so(options);
    so.Add(domain);
    keep.push_back(std::move(domain));
  } catch (const std::exception& e) {
    return Ort::GetApi().CreateStatus(ORT_FAIL, e.what());
  }
  return nullptr;
}

// For oga-npu's own checks (ctypes): which ggml this is and what the CPU gives it.
__attribute__((visibility("default"))) const char* oga_npu_ggml_info() {
  static std::string s;
  if (s.empty()) {
    s = std::string("ggml threads=") + std::to_string(engine().n_threads) + " repack=" + (engine().repack ? "yes" : "no") +
        " avx2=" + std::to_string(ggml_cpu_has_avx2()) + " avx512=" + std::to_string(ggml_cpu_has_avx512()) +
        " avx512_vnni=" + std::to_string(ggml_cpu_has_avx512_vnni()) + " amx_int8=" + std::to_string(ggml_cpu_has_amx_int8());
  }
  return s.c_str();
}
}

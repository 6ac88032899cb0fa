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
// The products are ggml's own: A's rows quantized by the weight type's vec_dot_type
// from_float (Q8_0 / Q8_1 / Q8_K, as llama.cpp), then ggml's vec_dot per (weight row, A row).
// Q4_0 and Q4_K weights are repacked once when the session is made, as llama.cpp's CPU_REPACK
// buffer type does at load on AVX2 (8 rows interleaved; ggml's gemv/gemm kernels on A's rows
// quantized 4 at a time), and the mapped file pages they came from are dropped; every other
// weight is read where onnxruntime holds it (the mapped model file). OGA_NPU_GGML_NO_REPACK=1
// reads every weight in place.
// The work runs on onnxruntime's own intra-op pool (KernelContext_ParallelFor), not on a
// second pool: two pools of spinning threads on the same cores starved each other (decode
// at a tenth of llama.cpp's on 16 cores, measured), and a pool whose barriers wait for every
// thread stalls whenever one thread is descheduled on a busy machine.
//
// Tasks: blocks of ROWS weight rows x MROWS rows of A, each Y element written by one task.
//
// The library is linked with -z nodelete: onnxruntime dlcloses a custom-op library with the
// session options that registered it, which must not unmap code another session still runs.

#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"
#undef ORT_API_MANUAL_INIT

#include <algorithm>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>

#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "ggml.h"

// ggml-cpu's repacked kernels for x86 (ggml/src/ggml-cpu/repack.h, extern "C" there): the
// weight rows interleaved 8 at a time, A's rows quantized 4 at a time (llama.cpp's CPU_REPACK
// buffer type on AVX2 picks exactly these two layouts for Q4_0 and Q4_K).
ggml_backend_buffer_type_t ggml_backend_cpu_repack_buffer_type(void);
extern "C" {
void ggml_quantize_mat_q8_0_4x8(const float* x, void* vy, int64_t k);
void ggml_quantize_mat_q8_K_4x8(const float* x, void* vy, int64_t k);
void ggml_gemv_q4_0_8x8_q8_0(int n, float* s, size_t bs, const void* vx, const void* vy, int nr, int nc);
void ggml_gemm_q4_0_8x8_q8_0(int n, float* s, size_t bs, const void* vx, const void* vy, int nr, int nc);
void ggml_gemv_q4_K_8x8_q8_K(int n, float* s, size_t bs, const void* vx, const void* vy, int nr, int nc);
void ggml_gemm_q4_K_8x8_q8_K(int n, float* s, size_t bs, const void* vx, const void* vy, int nr, int nc);
}

namespace {

constexpr int64_t ROWS = 16;    // weight rows per task (ggml's own tile is 16 x 16)
constexpr int64_t PROWS = 64;   // repacked weight rows per task when A has 4 rows or more
constexpr int64_t MROWS = 64;   // A rows per task: a task's quantized A stays in L2

void init_ggml() {
  static std::once_flag once;
  std::call_once(once, [] {
    // ggml's own log says each repacked tensor at debug level: keep warnings and errors only
    ggml_log_set(
        [](ggml_log_level level, const char* text, void*) {
          if (level == GGML_LOG_LEVEL_WARN || level == GGML_LOG_LEVEL_ERROR) std::fputs(text, stderr);
        },
        nullptr);
    ggml_cpu_init();  // fp16 tables, CPU feature checks
  });
}

size_t row_bytes(ggml_type t, int64_t k) { return ggml_row_size(t, k); }

void check_type(int64_t t) {
  if (t < 0 || t >= GGML_TYPE_COUNT || ggml_get_type_traits(static_cast<ggml_type>(t))->blck_size == 0)
    throw std::runtime_error("oga_npu.ggml: unknown ggml type " + std::to_string(t));
  const auto* cpu = ggml_get_type_traits_cpu(static_cast<ggml_type>(t));
  if (!cpu->vec_dot || !ggml_get_type_traits_cpu(cpu->vec_dot_type)->from_float)
    throw std::runtime_error("oga_npu.ggml: ggml has no CPU dot product for type " + std::string(ggml_type_name(static_cast<ggml_type>(t))));
}

using gemx_t = void (*)(int, float*, size_t, const void*, const void*, int, int);
using quant4_t = void (*)(const float*, void*, int64_t);

struct Packed {  // a layout ggml repacks this type into on this CPU, and its kernels
  quant4_t quant4 = nullptr;
  gemx_t gemv = nullptr, gemm = nullptr;
};

Packed packed_kernels(ggml_type t, int64_t rows) {
#if defined(__x86_64__) || defined(_M_X64)
  if (std::getenv("OGA_NPU_GGML_NO_REPACK") || !ggml_cpu_has_avx2() || rows % 8 != 0) return {};
  if (t == GGML_TYPE_Q4_0) return {ggml_quantize_mat_q8_0_4x8, ggml_gemv_q4_0_8x8_q8_0, ggml_gemm_q4_0_8x8_q8_0};
  if (t == GGML_TYPE_Q4_K) return {ggml_quantize_mat_q8_K_4x8, ggml_gemv_q4_K_8x8_q8_K, ggml_gemm_q4_K_8x8_q8_K};
#endif
  (void)t;
  (void)rows;
  return {};
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
    unsigned long lo = 0, hi = 0, off = 0, inode = 0;
    char perms[8] = {0}, dev[32] = {0}, path[512] = {0};
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

// A weight repacked by ggml's CPU_REPACK buffer type (its set_tensor interleaves the rows).
struct Repacked {
  ggml_context* meta = nullptr;
  ggml_backend_buffer_t buf = nullptr;
  const uint8_t* data = nullptr;
  Repacked() = default;
  Repacked(const Repacked&) = delete;
  Repacked& operator=(const Repacked&) = delete;
  ~Repacked() {
    if (buf) ggml_backend_buffer_free(buf);
    if (meta) ggml_free(meta);
  }
  bool make(ggml_type t, int64_t k, int64_t rows, const void* src) {
    ggml_init_params ip = {ggml_tensor_overhead() * 2 + 256, nullptr, true};
    meta = ggml_init(ip);
    if (!meta) return false;
    ggml_tensor* w = ggml_new_tensor_2d(meta, t, k, rows);
    ggml_backend_buffer_type_t bt = ggml_backend_cpu_repack_buffer_type();
    buf = ggml_backend_buft_alloc_buffer(bt, ggml_nbytes(w) + ggml_backend_buft_get_alignment(bt));
    if (!buf || ggml_backend_tensor_alloc(buf, w, ggml_backend_buffer_get_base(buf)) != GGML_STATUS_SUCCESS) return false;
    if (!w->extra) return false;  // ggml found no layout for it on this CPU
    ggml_backend_tensor_set(w, src, 0, ggml_nbytes(w));
    data = static_cast<const uint8_t*>(w->data);
    release_source(src, ggml_nbytes(w));
    return true;
  }
};

struct Part {
  ggml_type type;
  ggml_type vdt;  // what A is quantized to for this type's dot product
  ggml_vec_dot_t dot;
  const uint8_t* w = nullptr;
  size_t wrow = 0;  // bytes per weight row
  int64_t n = 0;    // weight rows (output columns)
  int64_t off = 0;  // first output column
  const uint8_t* aq = nullptr;
  size_t arow = 0;  // bytes per quantized A row
  Packed pk;        // set: w is repacked, aq is A quantized 4 rows at a time
};

struct Job {
  std::vector<Part> parts;
  std::vector<int64_t> first_task;  // per part: index of its first task
  int64_t m = 0, k = 0, n_total = 0, mblocks = 0;
  float* y = nullptr;
  const float* a = nullptr;
  // A quantized once per (vec_dot type, layout): plain rows, or 4-row groups for the repacked
  struct Q {
    ggml_type t;
    quant4_t quant4;  // null: plain rows
    uint8_t* buf;
  };
  std::vector<Q> qbufs;
};

void quantize_task(void* data, size_t i) {
  Job& j = *static_cast<Job*>(data);
  size_t q = i / static_cast<size_t>(j.m), r = i % static_cast<size_t>(j.m);
  const Job::Q& b = j.qbufs[q];
  size_t rb = row_bytes(b.t, j.k);
  int64_t grouped = b.quant4 ? j.m - j.m % 4 : 0;  // rows quantized 4 at a time
  if (static_cast<int64_t>(r) < grouped) {
    if (r % 4 == 0) b.quant4(j.a + r * j.k, b.buf + r * rb, j.k);
    return;
  }
  ggml_get_type_traits_cpu(b.t)->from_float(j.a + r * j.k, b.buf + r * rb, j.k);
}

void dot_task(void* data, size_t i) {
  Job& j = *static_cast<Job*>(data);
  size_t p = 0;
  while (p + 1 < j.parts.size() && static_cast<int64_t>(i) >= j.first_task[p + 1]) ++p;
  const Part& x = j.parts[p];
  int64_t t = static_cast<int64_t>(i) - j.first_task[p];
  if (x.pk.gemv) {  // repacked: a block of weight rows against every row of A
    int64_t rows = j.m > 3 ? PROWS : ROWS;
    int64_t r0 = t * rows, r1 = std::min(r0 + rows, x.n);
    int nc = static_cast<int>(r1 - r0), k = static_cast<int>(j.k);
    const uint8_t* w = x.w + r0 * x.wrow;
    int64_t grouped = j.m - j.m % 4;
    if (grouped > 0) x.pk.gemm(k, j.y + x.off + r0, static_cast<size_t>(j.n_total), w, x.aq, static_cast<int>(grouped), nc);
    for (int64_t m = grouped; m < j.m; ++m)
      x.pk.gemv(k, j.y + m * j.n_total + x.off + r0, static_cast<size_t>(j.n_total), w, x.aq + m * x.arow, 1, nc);
    return;
  }
  int64_t r0 = (t / j.mblocks) * ROWS, r1 = std::min(r0 + ROWS, x.n);
  int64_t m0 = (t % j.mblocks) * MROWS, m1 = std::min(m0 + MROWS, j.m);
  const int k = static_cast<int>(j.k);
  for (int64_t m = m0; m < m1; ++m) {
    const uint8_t* aq = x.aq + m * x.arow;
    float* y = j.y + m * j.n_total + x.off;
    for (int64_t r = r0; r < r1; ++r) x.dot(k, y + r, 0, x.w + r * x.wrow, 0, aq, 0, 1);
  }
}

struct MatMulKernel {
  int64_t K = 0;
  std::vector<ggml_type> types;
  std::vector<std::unique_ptr<Repacked>> packed;  // per weight: its repacked copy, or null

  MatMulKernel(const OrtApi&, const OrtKernelInfo* info) {
    init_ggml();
    Ort::ConstKernelInfo ki(info);
    K = ki.GetAttribute<int64_t>("K");
    std::vector<int64_t> ts = ki.GetAttributes<int64_t>("types");
    if (ts.empty() || ts.size() > 3) throw std::runtime_error("GgmlMatMul: 1 to 3 types");
    for (auto t : ts) {
      check_type(t);
      if (K % ggml_blck_size(static_cast<ggml_type>(t)) != 0) throw std::runtime_error("GgmlMatMul: K not a whole number of blocks");
      types.push_back(static_cast<ggml_type>(t));
    }
    // a constant weight of the wrong size is refused when the session is made; one ggml can
    // repack on this CPU is repacked now, once (llama.cpp does it at load)
    packed.resize(types.size());
    for (size_t i = 0; i < types.size(); ++i) {
      int is_const = 0;
      Ort::ConstValue v = ki.GetTensorConstantInput(1 + i, &is_const);
      if (!is_const) continue;
      int64_t rows = rows_of(i, v);
      if (!packed_kernels(types[i], rows).gemv) continue;
      auto r = std::make_unique<Repacked>();
      if (r->make(types[i], K, rows, v.GetTensorRawData())) packed[i] = std::move(r);
    }
  }

  int64_t rows_of(size_t i, const Ort::ConstValue& v) const {
    auto shape = v.GetTensorTypeAndShapeInfo().GetShape();
    int64_t bytes = 1;
    for (auto d : shape) bytes *= d;
    size_t rb = row_bytes(types[i], K);
    int64_t rows = shape.empty() ? 0 : shape[0];
    if (rows <= 0 || static_cast<size_t>(bytes) != rb * static_cast<size_t>(rows))
      throw std::runtime_error("GgmlMatMul: W" + std::to_string(i) + " is not [N, " + std::to_string(rb) + "] bytes");
    return rows;
  }

  void Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    Ort::ConstValue a = ctx.GetInput(0);
    auto ashape = a.GetTensorTypeAndShapeInfo().GetShape();
    if (ashape.empty() || ashape.back() != K) throw std::runtime_error("GgmlMatMul: A's last dimension is not K");
    Job j;
    j.k = K;
    j.m = 1;
    for (size_t d = 0; d + 1 < ashape.size(); ++d) j.m *= ashape[d];
    for (size_t i = 0; i < types.size(); ++i) {
      Ort::ConstValue v = ctx.GetInput(1 + i);
      Part x;
      x.type = types[i];
      const auto* cpu = ggml_get_type_traits_cpu(x.type);
      x.vdt = cpu->vec_dot_type;
      x.dot = cpu->vec_dot;
      x.n = rows_of(i, v);
      x.w = static_cast<const uint8_t*>(v.GetTensorRawData());
      if (packed[i]) {
        x.w = packed[i]->data;
        x.pk = packed_kernels(x.type, x.n);
      }
      x.wrow = row_bytes(x.type, K);
      x.off = j.n_total;
      x.arow = row_bytes(x.vdt, K);
      j.n_total += x.n;
      j.parts.push_back(x);
    }
    std::vector<int64_t> yshape(ashape);
    yshape.back() = j.n_total;
    Ort::UnownedValue y = ctx.GetOutput(0, yshape);
    j.y = y.GetTensorMutableData<float>();
    j.a = a.GetTensorData<float>();
    if (j.m == 0) return;

    // A quantized once per distinct vec_dot type (a Q4_K_M qkv: Q4_K, Q4_K, Q6_K -> Q8_K once)
    std::vector<std::vector<uint8_t>> store;
    for (auto& x : j.parts) {
      auto it = std::find_if(j.qbufs.begin(), j.qbufs.end(), [&](auto& q) { return q.t == x.vdt && q.quant4 == x.pk.quant4; });
      if (it == j.qbufs.end()) {
        store.emplace_back(x.arow * static_cast<size_t>(j.m));
        j.qbufs.push_back({x.vdt, x.pk.quant4, store.back().data()});
        it = j.qbufs.end() - 1;
      }
      x.aq = it->buf;
    }
    size_t nq = j.qbufs.size() * static_cast<size_t>(j.m);
    if (nq == 1) quantize_task(&j, 0);
    else ctx.ParallelFor(quantize_task, nq, 0, &j);

    j.mblocks = (j.m + MROWS - 1) / MROWS;
    int64_t tasks = 0;
    for (auto& x : j.parts) {
      j.first_task.push_back(tasks);
      if (x.pk.gemv) {
        int64_t rows = j.m > 3 ? PROWS : ROWS;
        tasks += (x.n + rows - 1) / rows;
      } else {
        tasks += (x.n + ROWS - 1) / ROWS * j.mblocks;
      }
    }
    ctx.ParallelFor(dot_task, static_cast<size_t>(tasks), 0, &j);
  }
};

struct GatherKernel {
  int64_t K = 0;
  ggml_type type;
  ggml_to_float_t to_float;

  GatherKernel(const OrtApi&, const OrtKernelInfo* info) {
    init_ggml();
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
    init_ggml();
    s = std::string("ggml pool=onnxruntime repack=" + std::string(packed_kernels(GGML_TYPE_Q4_K, 8).gemv ? "Q4_0,Q4_K" : "no") + " avx2=") + std::to_string(ggml_cpu_has_avx2()) + " avx512=" + std::to_string(ggml_cpu_has_avx512()) +
        " avx512_vnni=" + std::to_string(ggml_cpu_has_avx512_vnni()) + " amx_int8=" + std::to_string(ggml_cpu_has_amx_int8());
  }
  return s.c_str();
}
}

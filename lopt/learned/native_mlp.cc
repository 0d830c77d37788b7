// lopt's CPU kernel for the per-parameter MLP of the learned optimizers (lopt.learned.native
// builds it with the system's C++ compiler and registers it as an XLA FFI target).
//
// One pass over the parameters: each tile of 16 parameters (one 512-bit vector of float32) goes
// through every layer while its hidden activations stay in registers and L1, so nothing of
// width H x N is written to memory. XLA runs the same network as separate matrix products,
// bias additions and ReLUs over [H, N] intermediates (lopt.learned.per_param_mlp.reference).
//
// Two targets, both over T parameter tensors of n_t elements (row-major float32; B is any number
// of leading batch entries, e.g. PES arms; every operand has them):
//
// LoptMlpForward: the network on given features.
//   operands  x_tf [B, n_t]  feature f of tensor t, tensor-major (t = 0: every f, then t = 1...)
//             w_l, b_l [B, in, out], [B, out] for each layer l, in order
//   attributes num_tensors (T), num_inputs (F, the features per tensor)
//
// LoptMlpFeaturesForward: the features too, from each tensor's gradient, parameters and
// (already updated) accumulators, in two passes over the tensor: the features' mean squares, then
// the features divided by their root-mean-square and the network. The features are
// lopt.learned.features.raw_features without factored accumulators (M momenta, R rms):
//   g, clip(g, +-0.1), p, m_k, g rsqrt(v_r + 1e-12), [m_k rsqrt(v_0 + 1e-12), rsqrt(v_0 + 1e-12)]
// each divided by rsqrt(mean over the tensor of its square + 1e-18).
//   operands  g_t, p_t, m_t0 .. m_t(M-1), v_t0 .. v_t(R-1) [B, n_t], tensor-major; the layers
//   attributes num_tensors (T), num_inputs (2 + M + R), num_momenta (M)
//
// Results of both: direction_t, magnitude_t [B, n_t] for each tensor t, the last layer's first
// two outputs. Hidden layers use ReLU. Each array is its own operand, so XLA neither stacks,
// transposes nor concatenates anything for the call. Attribute fmas_only (both): 1 keeps every
// layer on float32 FMAs; 0 lets the hidden layers AmxLayer picks (16-32 inputs, at most 32
// outputs, at least 512 weights) run on AMX tiles where LoptAmxEnable turned them on
// (float32-accurate as well; see "AMX" below).

#include <algorithm>
#include <atomic>
#include <functional>
#include <thread>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "xla/ffi/api/ffi.h"

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__) && defined(__linux__)
#define LOPT_AMX 1
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kLanes = 16;  // parameters per tile
// Output units accumulated in registers at once: 8 independent FMA chains cover the FMA
// latency; on the 2-core development CPU the inner loop runs at its float32 FMA throughput
// (W2's network, 8 x 2,410 parameters through 11 -> 32 -> 32 -> 2: 580 us, ~96 GFLOP/s).
constexpr int64_t kBlock = 8;

typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));

struct Layer {
  const float* w;  // [in, out] of this batch entry
  const float* b;  // [out]
  int64_t in, out;
};

// out[u] = b[u] + sum_i in[i] * w[i, u] for the units u0 .. u0 + K - 1, ReLU when `relu`.
template <int K>
inline void Units(const Vec* in, const Layer& layer, int64_t u0, bool relu, Vec* out) {
  Vec acc[K];
  for (int k = 0; k < K; ++k) acc[k] = Vec{} + layer.b[u0 + k];
  for (int64_t i = 0; i < layer.in; ++i) {
    const Vec x = in[i];
    const float* w = layer.w + i * layer.out + u0;
    for (int k = 0; k < K; ++k) acc[k] += w[k] * x;
  }
  const Vec zero = Vec{};
  for (int k = 0; k < K; ++k) out[u0 + k] = relu ? (acc[k] > zero ? acc[k] : zero) : acc[k];
}

// Units<K> for few units (the last layer's two): the sum over inputs in four interleaved partial
// sums, so that 4K chains of FMAs instead of K hide the FMA latency.
template <int K>
inline void FewUnits(const Vec* in, const Layer& layer, int64_t u0, bool relu, Vec* out) {
  constexpr int kSplit = 4;
  Vec acc[kSplit][K] = {};
  int64_t i = 0;
  for (; i + kSplit <= layer.in; i += kSplit)
    for (int j = 0; j < kSplit; ++j) {
      const float* w = layer.w + (i + j) * layer.out + u0;
      for (int k = 0; k < K; ++k) acc[j][k] += w[k] * in[i + j];
    }
  for (; i < layer.in; ++i)
    for (int k = 0; k < K; ++k) acc[0][k] += layer.w[i * layer.out + u0 + k] * in[i];
  const Vec zero = Vec{};
  for (int k = 0; k < K; ++k) {
    const Vec v = ((acc[0][k] + acc[1][k]) + (acc[2][k] + acc[3][k])) + layer.b[u0 + k];
    out[u0 + k] = relu ? (v > zero ? v : zero) : v;
  }
}

inline void Dense(const Vec* in, const Layer& layer, int64_t units, bool relu, Vec* out) {
  int64_t u0 = 0;
  if (units <= 2) {  // the last layer
    if (units == 2) return FewUnits<2>(in, layer, 0, relu, out);
    return FewUnits<1>(in, layer, 0, relu, out);
  }
  for (; u0 + kBlock <= units; u0 += kBlock) Units<kBlock>(in, layer, u0, relu, out);
  for (; u0 + 2 <= units; u0 += 2) Units<2>(in, layer, u0, relu, out);
  for (; u0 < units; ++u0) Units<1>(in, layer, u0, relu, out);
}

// --- AMX: hidden layers of at most 32 x 32 as bfloat16 tile products, six per product ----------
//
// Where the CPU has AMX (Intel Sapphire Rapids and later) and Linux grants the process its tile
// registers (LoptAmxEnable), a hidden layer with 16 to 32 inputs, at most 32 outputs and at least
// 512 weights (AmxLayer) runs as tile products instead of FMAs: W2's 32 -> 32 layer, 71% of the
// network's multiply-adds, takes 118-142 ns per tile of 16 parameters instead of 176-204 ns on
// the development CPU. (Issuing one tile's products early and finishing them after the next
// tile's FMA layers gained nothing: the core's out-of-order window overlaps them already.)
//
// Precision is float32's, by the six-product scheme of XLA's BF16_BF16_F32_X6 algorithm (Henry,
// Tang & Heinecke, "Leveraging the bfloat16 Artificial Intelligence Datatype For Higher-Precision
// Computations", ARITH 2019): each float32 operand is split exactly into three bfloat16 parts,
// a = a1 + a2 + a3, by truncation (a1 = the top 16 bits of a, a2 = those of a - a1, a3 = the
// rest, each 8 significant bits), and a.b ~ a1b1 + a1b2 + a2b1 + a1b3 + a3b1 + a2b2, accumulated
// in float32 (the products of two parts are exact in float32). The dropped terms are below
// 2^-21 of |a.b|, under the float32 rounding of a 32-term sum; tests/test_native.py checks the
// outputs' error against a float64 reference is float32's. Non-finite inputs give NaN. The
// JAX matmul precision "F32_F32_F32" (or LOPT_NATIVE_AMX=0) keeps every layer on FMAs.
//
// Tiles, all 16 rows x 64 bytes: tmm0/1/2 = the activations' parts 1/2/3 in VNNI pairs (row r
// holds units 2r and 2r + 1 of the 16 lanes interleaved), tmm4/5/6 = the weights^T's parts of 16
// output units (a row is one unit's 32 inputs), tmm3 / tmm7 = outputs of units 0-15 / 16-31 (a
// row is one unit's 16 lanes: the Vec layout).

bool g_amx = false;  // set once by LoptAmxEnable, before any call

#ifdef LOPT_AMX
constexpr int64_t kAmxWidth = 32;

// A hidden layer's weights^T in three bfloat16 parts, padded with zeros to 32 x 32.
struct alignas(64) AmxWeights {
  uint16_t part[3][kAmxWidth][kAmxWidth];  // [part][unit][input]
};

// Layers worth tiles: 16 to 32 inputs, at most 32 outputs and at least 512 multiply-adds per
// parameter. A tile pass has a fixed cost of ~60 ns per 16 parameters (splitting and pairing the
// activations, loading the tiles), so smaller layers are faster as FMAs (development CPU, ns per
// 16 parameters, FMAs / tiles: 32x32 176-204 / 118-142, 16x32 109 / 93, 24x17 90 / 111, 16x16
// 55 / 63; 11x32 82 / 85 with both parts of a narrow layer's split sharing a tile row).
inline bool AmxLayer(const Layer& layer) {
  return layer.in >= 16 && layer.in <= kAmxWidth && layer.out <= kAmxWidth && layer.in * layer.out >= 512;
}

// x = part1 + part2 + part3 exactly (float32 x, truncation), each part's top 16 bits returned.
inline void Split3(__m512i x, __m512i& p1, __m512i& p2, __m512i& p3) {
  const __m512i mask = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  const __m512i t1 = _mm512_and_si512(x, mask);
  const __m512i r = _mm512_castps_si512(_mm512_sub_ps(_mm512_castsi512_ps(x), _mm512_castsi512_ps(t1)));
  const __m512i t2 = _mm512_and_si512(r, mask);
  p1 = t1, p2 = t2;
  p3 = _mm512_castps_si512(_mm512_sub_ps(_mm512_castsi512_ps(r), _mm512_castsi512_ps(t2)));
}

// Once per batch entry of a call: split, then transposed to rows of units.
void PackWeights(const Layer& layer, AmxWeights& a) {
  alignas(64) uint16_t parts[3][kAmxWidth][kAmxWidth] = {};  // [part][input][unit]
  for (int64_t k = 0; k < layer.in; ++k)
    for (int64_t u0 = 0; u0 < layer.out; u0 += 16) {
      const __mmask16 lanes = static_cast<__mmask16>((1u << std::min<int64_t>(16, layer.out - u0)) - 1);
      __m512i p[3];
      Split3(_mm512_castps_si512(_mm512_maskz_loadu_ps(lanes, layer.w + k * layer.out + u0)), p[0], p[1], p[2]);
      for (int j = 0; j < 3; ++j) _mm256_storeu_si256(reinterpret_cast<__m256i*>(&parts[j][k][u0]),
                                                      _mm512_cvtepi32_epi16(_mm512_srli_epi32(p[j], 16)));
    }
  for (int j = 0; j < 3; ++j)
    for (int64_t u = 0; u < kAmxWidth; ++u)
      for (int64_t k = 0; k < kAmxWidth; ++k) a.part[j][u][k] = parts[j][k][u];
}

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Every tile 16 rows x 64 bytes; once per chunk (the configuration is per thread).
inline void ConfigureTiles() {
  TileConfig config;
  for (int t = 0; t < 8; ++t) config.colsb[t] = 64, config.rows[t] = 16;
  _tile_loadconfig(&config);
}

// The six products of units u0 .. u0 + 15 into tile C, smallest first, stored to out + u0. (A
// macro: the tile intrinsics take the register number as text.)
#define LOPT_AMX_UNITS(C, a, u0, out)        \
  do {                                       \
    _tile_loadd(4, (a).part[0][u0], 64);     \
    _tile_loadd(5, (a).part[1][u0], 64);     \
    _tile_loadd(6, (a).part[2][u0], 64);     \
    _tile_zero(C);                           \
    _tile_dpbf16ps(C, 5, 1); /* w2 . h2 */   \
    _tile_dpbf16ps(C, 6, 0); /* w3 . h1 */   \
    _tile_dpbf16ps(C, 4, 2); /* w1 . h3 */   \
    _tile_dpbf16ps(C, 5, 0); /* w2 . h1 */   \
    _tile_dpbf16ps(C, 4, 1); /* w1 . h2 */   \
    _tile_dpbf16ps(C, 4, 0); /* w1 . h1 */   \
    _tile_stored(C, (out) + (u0), 64);       \
  } while (0)

// out[u] = relu(b[u] + sum_k in[k] w[k, u]) for the layer's units; `out` has room for 32 Vecs.
inline void AmxDense(const Vec* in, const Layer& layer, const AmxWeights& a, Vec* out) {
  alignas(64) uint32_t b[3][16][kLanes];  // [part][row r: units 2r, 2r + 1][lane]
  const __m512i high = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  const int64_t rows = (layer.in + 1) / 2;
  for (int64_t r = rows; r < 16; ++r)  // past the inputs: zeros, which meet zero weights
    for (int j = 0; j < 3; ++j) _mm512_store_si512(b[j][r], _mm512_setzero_si512());
  for (int64_t r = 0; r < rows; ++r) {
    __m512i x0, x1 = _mm512_setzero_si512();
    std::memcpy(&x0, &in[2 * r], sizeof(Vec));
    if (2 * r + 1 < layer.in) std::memcpy(&x1, &in[2 * r + 1], sizeof(Vec));
    __m512i p0[3], p1[3];
    Split3(x0, p0[0], p0[1], p0[2]);
    Split3(x1, p1[0], p1[1], p1[2]);
    // 32-bit lane l: unit 2r's part (low half, the even bf16 slot), unit 2r + 1's (high half)
    for (int j = 0; j < 3; ++j)
      _mm512_store_si512(b[j][r], _mm512_ternarylogic_epi32(_mm512_srli_epi32(p0[j], 16), p1[j], high, 0xF8));
  }
  _tile_loadd(0, b[0], 64);
  _tile_loadd(1, b[1], 64);
  _tile_loadd(2, b[2], 64);
  LOPT_AMX_UNITS(3, a, 0, out);
  if (layer.out > 16) LOPT_AMX_UNITS(7, a, 16, out);
  const Vec zero = Vec{};
  for (int64_t u = 0; u < layer.out; ++u) {
    const Vec v = out[u] + layer.b[u];
    out[u] = v > zero ? v : zero;
  }
}
#endif

// How a chunk runs its network: the layers and, where AMX is on, each hidden layer's packed
// weights (null where the layer runs as FMAs).
struct Plan {
  std::vector<Layer> layers;
#ifdef LOPT_AMX
  std::vector<std::unique_ptr<AmxWeights>> amx;
#endif
  bool tiles = false;  // whether any layer runs on AMX
};

Plan MakePlan(std::vector<Layer> layers, bool fmas_only) {
  Plan plan;
  plan.layers = std::move(layers);
#ifdef LOPT_AMX
  plan.amx.resize(plan.layers.size());
  for (size_t l = 0; g_amx && !fmas_only && l + 1 < plan.layers.size(); ++l) {
    if (!AmxLayer(plan.layers[l])) continue;
    plan.amx[l].reset(new AmxWeights);
    PackWeights(plan.layers[l], *plan.amx[l]);
    plan.tiles = true;
  }
#endif
  return plan;
}

// The tiles configured for a chunk's lifetime, released after it.
struct ChunkTiles {
  explicit ChunkTiles(const Plan& plan) : used(plan.tiles) {
#ifdef LOPT_AMX
    if (used) ConfigureTiles();
#endif
  }
  ~ChunkTiles() {
#ifdef LOPT_AMX
    if (used) _tile_release();
#endif
  }
  const bool used;
};

// The operands and results of one call, checked against each other.
struct Call {
  int64_t num_tensors = 0, num_inputs = 0, batch = 1;
  std::vector<const float*> inputs;  // [tensor * num_inputs + i]
  std::vector<int64_t> sizes;        // elements per tensor
  std::vector<const float*> weights, biases;
  std::vector<int64_t> fan_in, fan_out;
  std::vector<float*> outputs;  // direction, magnitude of each tensor
  int64_t width = 0;            // widest layer input or output
};

ffi::Error Parse(ffi::RemainingArgs& args, ffi::RemainingRets& rets, int64_t num_tensors, int64_t num_inputs,
                 int64_t num_features, Call& call) {
  if (num_tensors < 1 || num_inputs < 1)
    return ffi::Error::InvalidArgument("lopt mlp: num_tensors and num_inputs must be positive");
  call.num_tensors = num_tensors;
  call.num_inputs = num_inputs;
  const int64_t count = num_tensors * num_inputs;
  const int64_t num_params = static_cast<int64_t>(args.size()) - count;
  if (num_params < 2 || num_params % 2 != 0)
    return ffi::Error::InvalidArgument("lopt mlp: layers must come as (weights, bias) pairs after the inputs");
  if (static_cast<int64_t>(rets.size()) != 2 * num_tensors)
    return ffi::Error::InvalidArgument("lopt mlp: two results per tensor expected");

  call.inputs.resize(count);
  call.sizes.resize(num_tensors);
  int64_t batch = -1;
  for (int64_t t = 0; t < num_tensors; ++t) {
    for (int64_t i = 0; i < num_inputs; ++i) {
      auto x = args.get<ffi::Buffer<ffi::F32>>(t * num_inputs + i);
      if (x.has_error()) return x.error();
      const auto dims = x->dimensions();
      if (dims.size() == 0) return ffi::Error::InvalidArgument("lopt mlp: inputs must be [..., n]");
      const int64_t n = dims[dims.size() - 1];
      const int64_t b = n == 0 ? 0 : static_cast<int64_t>(x->element_count()) / n;
      if (i == 0) call.sizes[t] = n;
      if (n != call.sizes[t] || (batch >= 0 && b != batch && n > 0))
        return ffi::Error::InvalidArgument("lopt mlp: the inputs of a tensor differ in shape");
      if (n > 0) batch = b;
      call.inputs[t * num_inputs + i] = x->typed_data();
    }
  }
  call.batch = batch < 0 ? 1 : batch;

  const int64_t num_layers = num_params / 2;
  call.width = num_features;
  for (int64_t l = 0; l < num_layers; ++l) {
    auto w = args.get<ffi::Buffer<ffi::F32>>(count + 2 * l);
    auto b = args.get<ffi::Buffer<ffi::F32>>(count + 2 * l + 1);
    if (w.has_error()) return w.error();
    if (b.has_error()) return b.error();
    const auto wd = w->dimensions();
    if (wd.size() < 2) return ffi::Error::InvalidArgument("lopt mlp: weights must be [..., in, out]");
    const int64_t in = wd[wd.size() - 2], out = wd[wd.size() - 1];
    const int64_t expected_in = l == 0 ? num_features : call.fan_out.back();
    if (in != expected_in || static_cast<int64_t>(w->element_count()) != call.batch * in * out ||
        static_cast<int64_t>(b->element_count()) != call.batch * out)
      return ffi::Error::InvalidArgument("lopt mlp: layer " + std::to_string(l) + " does not fit its input");
    call.weights.push_back(w->typed_data());
    call.biases.push_back(b->typed_data());
    call.fan_in.push_back(in);
    call.fan_out.push_back(out);
    call.width = std::max(call.width, out);
  }
  if (call.fan_out.back() < 2) return ffi::Error::InvalidArgument("lopt mlp: the last layer needs two outputs");

  call.outputs.resize(2 * num_tensors);
  for (int64_t r = 0; r < 2 * num_tensors; ++r) {
    auto out = rets.get<ffi::Buffer<ffi::F32>>(r);
    if (out.has_error()) return out.error();
    if (static_cast<int64_t>((*out)->element_count()) != call.batch * call.sizes[r / 2])
      return ffi::Error::InvalidArgument("lopt mlp: a result does not match its tensor");
    call.outputs[r] = (*out)->typed_data();
  }
  return ffi::Error::Success();
}

// The network on one tile whose features are in ping[0 .. F); returns the buffer holding the
// last layer's outputs (direction in [0], magnitude in [1]).
inline const Vec* Network(const Plan& plan, Vec* ping, Vec* pong) {
  const std::vector<Layer>& layers = plan.layers;
  Vec *in = ping, *out = pong;
  for (size_t l = 0; l + 1 < layers.size(); ++l) {
#ifdef LOPT_AMX
    if (plan.amx[l]) {
      AmxDense(in, layers[l], *plan.amx[l], out);
      std::swap(in, out);
      continue;
    }
#endif
    Dense(in, layers[l], layers[l].out, true, out);
    std::swap(in, out);
  }
  Dense(in, layers.back(), 2, false, out);
  return out;
}

// Loads lanes [n0, n0 + lanes) of x, zero beyond.
// (A whole tile's copy has a constant size, so it compiles to one vector load, not a call.)
inline Vec Load(const float* x, int64_t n0, int64_t lanes) {
  Vec v = Vec{};
  if (lanes == kLanes)
    std::memcpy(&v, x + n0, sizeof(Vec));
  else
    std::memcpy(&v, x + n0, lanes * sizeof(float));
  return v;
}

inline Vec Rsqrt(Vec x) {
  Vec r;
  for (int64_t l = 0; l < kLanes; ++l) r[l] = 1.0f / std::sqrt(x[l] + 1e-12f);
  return r;
}

// Features of one tile (see the header) into f[0 .. 3 + M + R (+ M + 1 when R > 0)).
inline void TileFeatures(const float* const* in, int64_t num_momenta, int64_t num_rms, int64_t n0, int64_t lanes,
                         Vec* f) {
  const Vec g = Load(in[0], n0, lanes);
  const Vec clip = Vec{} + 0.1f;
  int64_t k = 0;
  f[k++] = g;
  f[k++] = g > clip ? clip : (g < -clip ? -clip : g);
  f[k++] = Load(in[1], n0, lanes);
  for (int64_t m = 0; m < num_momenta; ++m) f[k++] = Load(in[2 + m], n0, lanes);
  if (num_rms == 0) return;
  Vec first = Vec{};
  for (int64_t r = 0; r < num_rms; ++r) {
    const Vec inverse = Rsqrt(Load(in[2 + num_momenta + r], n0, lanes));
    if (r == 0) first = inverse;
    f[k++] = g * inverse;
  }
  for (int64_t m = 0; m < num_momenta; ++m) f[k++] = f[3 + m] * first;
  f[k++] = first;
}

inline void Store(const Vec* out, float* dir, float* mag, int64_t n0, int64_t lanes) {
  if (lanes == kLanes) {
    std::memcpy(dir + n0, &out[0], sizeof(Vec));
    std::memcpy(mag + n0, &out[1], sizeof(Vec));
  } else {
    std::memcpy(dir + n0, &out[0], lanes * sizeof(float));
    std::memcpy(mag + n0, &out[1], lanes * sizeof(float));
  }
}

// Each batch entry's network (its own weights when the call is batched over PES arms).
std::vector<Plan> EntryPlans(const Call& call, bool fmas_only) {
  std::vector<Plan> plans;
  plans.reserve(call.batch);
  for (int64_t e = 0; e < call.batch; ++e) {
    std::vector<Layer> layers(call.weights.size());
    for (size_t l = 0; l < layers.size(); ++l)
      layers[l] = {call.weights[l] + e * call.fan_in[l] * call.fan_out[l], call.biases[l] + e * call.fan_out[l],
                   call.fan_in[l], call.fan_out[l]};
    plans.push_back(MakePlan(std::move(layers), fmas_only));
  }
  return plans;
}

// Vecs per activation buffer: the widest layer, and a whole AMX output tile pair.
int64_t Room(const Call& call) { return std::max<int64_t>(call.width, 32); }

// The network over the tiles of one chunk (see Chunks below) of tensor `tensor`, entry `entry`:
// fill(n0, lanes, x) writes the tile's features into x; the results go to the tensor's outputs.
template <typename Fill>
void NetworkTiles(const Call& call, const Plan& plan, int64_t entry, int64_t tensor, int64_t begin, int64_t end,
                  const Fill& fill) {
  const ChunkTiles tiles(plan);
  std::unique_ptr<Vec[]> ping(new Vec[Room(call)]), pong(new Vec[Room(call)]);
  const int64_t n = call.sizes[tensor];
  float* dir = call.outputs[2 * tensor] + entry * n;
  float* mag = call.outputs[2 * tensor + 1] + entry * n;
  for (int64_t n0 = begin; n0 < end; n0 += kLanes) {
    const int64_t lanes = std::min(kLanes, end - n0);
    fill(n0, lanes, ping.get());
    Store(Network(plan, ping.get(), pong.get()), dir, mag, n0, lanes);
  }
}

// The work of a call in fixed chunks of at most kChunk elements of one tensor of one batch entry.
// The chunks do not depend on the number of threads, and per-chunk sums are added in chunk
// order, so a call gives the same bits on one thread or many.
constexpr int64_t kChunk = 256 * kLanes;
// Calls smaller than this stay on the calling thread (W2's 4 x 2,410 parameters among them:
// there each XLA CPU device is busy with its own share of the population).
constexpr int64_t kParallelMin = 1 << 16;

struct Chunk {
  int64_t entry, tensor, begin, end;
};

std::vector<Chunk> Chunks(const Call& call) {
  std::vector<Chunk> chunks;
  for (int64_t e = 0; e < call.batch; ++e)
    for (int64_t t = 0; t < call.num_tensors; ++t)
      for (int64_t n0 = 0; n0 < call.sizes[t]; n0 += kChunk)
        chunks.push_back({e, t, n0, std::min(call.sizes[t], n0 + kChunk)});
  return chunks;
}

// body(i) for i in [0, n), on the calling thread and up to num_threads - 1 tasks of XLA's
// intra-op pool. The caller claims work too and waits only for chunks already claimed: XLA runs
// the CPU devices' programs on the same pool, so a queued task may start only after another
// device's program (which may wait on this one at a collective) lets go of its thread.
struct Work {
  std::atomic<int64_t> next{0}, completed{0};
  int64_t n = 0;
  std::function<void(int64_t)> body;
};

void Drain(Work& work) {
  for (int64_t i; (i = work.next.fetch_add(1)) < work.n;) {
    work.body(i);
    work.completed.fetch_add(1);
  }
}

void ParallelFor(ffi::ThreadPool& pool, int64_t n, bool parallel, std::function<void(int64_t)> body) {
  const int64_t helpers = parallel ? std::min(pool.num_threads() - 1, n - 1) : 0;
  if (helpers <= 0) {
    for (int64_t i = 0; i < n; ++i) body(i);
    return;
  }
  auto work = std::make_shared<Work>();
  work->n = n;
  work->body = std::move(body);
  for (int64_t h = 0; h < helpers; ++h) pool.Schedule([work] { Drain(*work); });
  Drain(*work);
  while (work->completed.load() < n) std::this_thread::yield();
}

int64_t TotalElements(const Call& call) {
  int64_t total = 0;
  for (int64_t n : call.sizes) total += n;
  return total * call.batch;
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::RemainingArgs args, ffi::RemainingRets rets, int64_t num_tensors,
                   int64_t num_inputs, int64_t fmas_only) {
  Call call;
  if (auto error = Parse(args, rets, num_tensors, num_inputs, num_inputs, call); error.failure()) return error;
  const std::vector<Chunk> chunks = Chunks(call);
  const std::vector<Plan> plans = EntryPlans(call, fmas_only != 0);
  ParallelFor(pool, chunks.size(), TotalElements(call) >= kParallelMin, [&](int64_t i) {
    const Chunk& c = chunks[i];
    const int64_t n = call.sizes[c.tensor];
    const float* const* x = call.inputs.data() + c.tensor * num_inputs;
    NetworkTiles(call, plans[c.entry], c.entry, c.tensor, c.begin, c.end, [&](int64_t n0, int64_t lanes, Vec* f) {
      for (int64_t k = 0; k < num_inputs; ++k) f[k] = Load(x[k] + c.entry * n, n0, lanes);
    });
  });
  return ffi::Error::Success();
}

ffi::Error FeaturesForward(ffi::ThreadPool pool, ffi::RemainingArgs args, ffi::RemainingRets rets,
                           int64_t num_tensors, int64_t num_inputs, int64_t num_momenta, int64_t fmas_only) {
  const int64_t num_rms = num_inputs - 2 - num_momenta;
  if (num_momenta < 1 || num_rms < 0)
    return ffi::Error::InvalidArgument("lopt mlp: needs g, p, at least one momentum and num_inputs = 2 + M + R");
  const int64_t num_features = 3 + num_momenta + num_rms + (num_rms > 0 ? num_momenta + 1 : 0);
  Call call;
  if (auto error = Parse(args, rets, num_tensors, num_inputs, num_features, call); error.failure()) return error;
  const std::vector<Chunk> chunks = Chunks(call);
  const bool parallel = TotalElements(call) >= kParallelMin;
  auto inputs_of = [&](const Chunk& c, std::vector<const float*>& in) {
    const int64_t n = call.sizes[c.tensor];
    for (int64_t i = 0; i < num_inputs; ++i) in[i] = call.inputs[c.tensor * num_inputs + i] + c.entry * n;
  };

  // pass 1: each chunk's sums of the features' squares (lanes past the end masked out)
  // (float within a chunk's lanes, at most 256 terms each; double across lanes and chunks)
  std::vector<double> partial(chunks.size() * num_features);
  ParallelFor(pool, chunks.size(), parallel, [&](int64_t i) {
    const Chunk& c = chunks[i];
    std::vector<const float*> in(num_inputs);
    inputs_of(c, in);
    std::unique_ptr<Vec[]> f(new Vec[num_features]), squares(new Vec[num_features]);
    for (int64_t k = 0; k < num_features; ++k) squares[k] = Vec{};
    for (int64_t n0 = c.begin; n0 < c.end; n0 += kLanes) {
      const int64_t lanes = std::min(kLanes, c.end - n0);
      TileFeatures(in.data(), num_momenta, num_rms, n0, lanes, f.get());
      if (lanes == kLanes) {
        for (int64_t k = 0; k < num_features; ++k) squares[k] += f[k] * f[k];
      } else {
        for (int64_t k = 0; k < num_features; ++k)
          for (int64_t l = 0; l < lanes; ++l) squares[k][l] += f[k][l] * f[k][l];
      }
    }
    for (int64_t k = 0; k < num_features; ++k) {
      double total = 0.0;
      for (int64_t l = 0; l < kLanes; ++l) total += squares[k][l];
      partial[i * num_features + k] = total;
    }
  });

  // per tensor and entry: 1 / root-mean-square of each feature, from the chunk sums in order
  std::vector<float> scale(chunks.size() * num_features);
  for (size_t first = 0; first < chunks.size();) {
    size_t last = first;
    while (last < chunks.size() && chunks[last].entry == chunks[first].entry &&
           chunks[last].tensor == chunks[first].tensor)
      ++last;
    const double n = static_cast<double>(call.sizes[chunks[first].tensor]);
    for (int64_t k = 0; k < num_features; ++k) {
      double total = 0.0;
      for (size_t i = first; i < last; ++i) total += partial[i * num_features + k];
      const float mean = static_cast<float>(total / n);
      const float inverse = 1.0f / std::sqrt(mean + 1e-18f);
      for (size_t i = first; i < last; ++i) scale[i * num_features + k] = inverse;
    }
    first = last;
  }

  // pass 2: normalised features through the network
  const std::vector<Plan> plans = EntryPlans(call, fmas_only != 0);
  ParallelFor(pool, chunks.size(), parallel, [&](int64_t i) {
    const Chunk& c = chunks[i];
    std::vector<const float*> in(num_inputs);
    inputs_of(c, in);
    const float* s = scale.data() + i * num_features;
    NetworkTiles(call, plans[c.entry], c.entry, c.tensor, c.begin, c.end, [&](int64_t n0, int64_t lanes, Vec* f) {
      TileFeatures(in.data(), num_momenta, num_rms, n0, lanes, f);
      for (int64_t k = 0; k < num_features; ++k) f[k] *= s[k];
    });
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(LoptMlpForward, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<int64_t>("num_tensors")
                                  .Attr<int64_t>("num_inputs")
                                  .Attr<int64_t>("fmas_only"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(LoptMlpFeaturesForward, FeaturesForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<int64_t>("num_tensors")
                                  .Attr<int64_t>("num_inputs")
                                  .Attr<int64_t>("num_momenta")
                                  .Attr<int64_t>("fmas_only"));

// Asks Linux for the AMX tile registers (arch_prctl ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) and
// turns the tile path on when `want` and they are granted, off otherwise. Returns 1 when on, 0
// when this build or CPU has no AMX or `want` is 0, else -errno of the refused request. Called
// by lopt.learned.native when it loads the library, before any kernel call.
extern "C" int LoptAmxEnable(int want) {
  g_amx = false;
#ifdef LOPT_AMX
  if (!want) return 0;
  constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  if (syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) != 0) return -errno;
  g_amx = true;
  return 1;
#else
  (void)want;
  return 0;
#endif
}

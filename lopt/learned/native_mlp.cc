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
// transposes nor concatenates anything for the call.

#include <algorithm>
#include <atomic>
#include <functional>
#include <thread>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "xla/ffi/api/ffi.h"

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

inline void Dense(const Vec* in, const Layer& layer, int64_t units, bool relu, Vec* out) {
  int64_t u0 = 0;
  for (; u0 + kBlock <= units; u0 += kBlock) Units<kBlock>(in, layer, u0, relu, out);
  for (; u0 + 2 <= units; u0 += 2) Units<2>(in, layer, u0, relu, out);
  for (; u0 < units; ++u0) Units<1>(in, layer, u0, relu, out);
}

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
inline const Vec* Network(const std::vector<Layer>& layers, Vec* ping, Vec* pong) {
  Vec *in = ping, *out = pong;
  for (size_t l = 0; l + 1 < layers.size(); ++l) {
    Dense(in, layers[l], layers[l].out, true, out);
    std::swap(in, out);
  }
  Dense(in, layers.back(), 2, false, out);
  return out;
}

// Loads lanes [n0, n0 + lanes) of x, zero beyond.
inline Vec Load(const float* x, int64_t n0, int64_t lanes) {
  Vec v = Vec{};
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

void Store(const Vec* out, float* dir, float* mag, int64_t n0, int64_t lanes) {
  std::memcpy(dir + n0, &out[0], lanes * sizeof(float));
  std::memcpy(mag + n0, &out[1], lanes * sizeof(float));
}

std::vector<Layer> EntryLayers(const Call& call, int64_t e) {
  std::vector<Layer> layers(call.weights.size());
  for (size_t l = 0; l < layers.size(); ++l)
    layers[l] = {call.weights[l] + e * call.fan_in[l] * call.fan_out[l], call.biases[l] + e * call.fan_out[l],
                 call.fan_in[l], call.fan_out[l]};
  return layers;
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
                   int64_t num_inputs) {
  Call call;
  if (auto error = Parse(args, rets, num_tensors, num_inputs, num_inputs, call); error.failure()) return error;
  const std::vector<Chunk> chunks = Chunks(call);
  ParallelFor(pool, chunks.size(), TotalElements(call) >= kParallelMin, [&](int64_t i) {
    const Chunk& c = chunks[i];
    const std::vector<Layer> layers = EntryLayers(call, c.entry);
    std::unique_ptr<Vec[]> ping(new Vec[call.width]), pong(new Vec[call.width]);
    const int64_t n = call.sizes[c.tensor];
    const float* const* x = call.inputs.data() + c.tensor * num_inputs;
    float* dir = call.outputs[2 * c.tensor] + c.entry * n;
    float* mag = call.outputs[2 * c.tensor + 1] + c.entry * n;
    for (int64_t n0 = c.begin; n0 < c.end; n0 += kLanes) {
      const int64_t lanes = std::min(kLanes, c.end - n0);
      for (int64_t f = 0; f < num_inputs; ++f) ping[f] = Load(x[f] + c.entry * n, n0, lanes);
      Store(Network(layers, ping.get(), pong.get()), dir, mag, n0, lanes);
    }
  });
  return ffi::Error::Success();
}

ffi::Error FeaturesForward(ffi::ThreadPool pool, ffi::RemainingArgs args, ffi::RemainingRets rets,
                           int64_t num_tensors, int64_t num_inputs, int64_t num_momenta) {
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
  ParallelFor(pool, chunks.size(), parallel, [&](int64_t i) {
    const Chunk& c = chunks[i];
    std::vector<const float*> in(num_inputs);
    inputs_of(c, in);
    const std::vector<Layer> layers = EntryLayers(call, c.entry);
    std::unique_ptr<Vec[]> ping(new Vec[call.width]), pong(new Vec[call.width]);
    const int64_t n = call.sizes[c.tensor];
    float* dir = call.outputs[2 * c.tensor] + c.entry * n;
    float* mag = call.outputs[2 * c.tensor + 1] + c.entry * n;
    const float* s = scale.data() + i * num_features;
    for (int64_t n0 = c.begin; n0 < c.end; n0 += kLanes) {
      const int64_t lanes = std::min(kLanes, c.end - n0);
      TileFeatures(in.data(), num_momenta, num_rms, n0, lanes, ping.get());
      for (int64_t k = 0; k < num_features; ++k) ping[k] *= s[k];
      Store(Network(layers, ping.get(), pong.get()), dir, mag, n0, lanes);
    }
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
                                  .Attr<int64_t>("num_inputs"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(LoptMlpFeaturesForward, FeaturesForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<int64_t>("num_tensors")
                                  .Attr<int64_t>("num_inputs")
                                  .Attr<int64_t>("num_momenta"));

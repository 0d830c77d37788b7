// lopt's CPU kernel for the per-parameter MLP of the learned optimizers (lopt.learned.native
// builds it with the system's C++ compiler and registers it as an XLA FFI target).
//
// One pass over the parameters: each tile of 16 parameters (one 512-bit vector of float32) goes
// through every layer while its hidden activations stay in registers and L1, so nothing of
// width H x N is written to memory. XLA runs the same network as separate matrix products,
// bias additions and ReLUs over [H, N] intermediates (lopt.learned.per_param_mlp.reference).
//
// Operands (row-major float32; B is any number of leading batch entries, e.g. PES arms), for
// T parameter tensors of n_t elements and F features:
//   x_tf     [B, n_t]          feature f of tensor t, tensor-major (t = 0: every f, then t = 1...)
//   w_l, b_l [B, in, out], [B, out] for each layer l, in order
// Attributes: num_tensors (T), num_features (F).
// Results: direction_t, magnitude_t [B, n_t] for each tensor t: the last layer's first two
// outputs. Hidden layers use ReLU. Passing each feature of each tensor as its own operand
// saves XLA the stacking, transposing and concatenating passes of one [B, F, N] operand.

#include <algorithm>
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

ffi::Error Forward(ffi::RemainingArgs args, ffi::RemainingRets rets, int64_t num_tensors,
                   int64_t num_features) {
  if (num_tensors < 1 || num_features < 1)
    return ffi::Error::InvalidArgument("lopt mlp: num_tensors and num_features must be positive");
  const int64_t num_inputs = num_tensors * num_features;
  const int64_t num_params = static_cast<int64_t>(args.size()) - num_inputs;
  if (num_params < 2 || num_params % 2 != 0)
    return ffi::Error::InvalidArgument("lopt mlp: layers must come as (weights, bias) pairs after the features");
  if (static_cast<int64_t>(rets.size()) != 2 * num_tensors)
    return ffi::Error::InvalidArgument("lopt mlp: two results per tensor expected");

  std::vector<const float*> inputs(num_inputs);
  std::vector<int64_t> sizes(num_tensors);
  int64_t batch = -1;
  for (int64_t t = 0; t < num_tensors; ++t) {
    for (int64_t f = 0; f < num_features; ++f) {
      auto x = args.get<ffi::Buffer<ffi::F32>>(t * num_features + f);
      if (x.has_error()) return x.error();
      const auto dims = x->dimensions();
      if (dims.size() == 0) return ffi::Error::InvalidArgument("lopt mlp: features must be [..., n]");
      const int64_t n = dims[dims.size() - 1];
      const int64_t b = n == 0 ? 0 : static_cast<int64_t>(x->element_count()) / n;
      if (f == 0) sizes[t] = n;
      if (n != sizes[t] || (batch >= 0 && b != batch && n > 0))
        return ffi::Error::InvalidArgument("lopt mlp: the features of a tensor differ in shape");
      if (n > 0) batch = b;
      inputs[t * num_features + f] = x->typed_data();
    }
  }
  if (batch < 0) batch = 1;

  const int64_t num_layers = num_params / 2;
  std::vector<const float*> weights(num_layers), biases(num_layers);
  std::vector<int64_t> fan_in(num_layers), fan_out(num_layers);
  int64_t width = num_features;
  for (int64_t l = 0; l < num_layers; ++l) {
    auto w = args.get<ffi::Buffer<ffi::F32>>(num_inputs + 2 * l);
    auto b = args.get<ffi::Buffer<ffi::F32>>(num_inputs + 2 * l + 1);
    if (w.has_error()) return w.error();
    if (b.has_error()) return b.error();
    const auto wd = w->dimensions();
    if (wd.size() < 2) return ffi::Error::InvalidArgument("lopt mlp: weights must be [..., in, out]");
    const int64_t in = wd[wd.size() - 2], out = wd[wd.size() - 1];
    const int64_t expected_in = l == 0 ? num_features : fan_out[l - 1];
    if (in != expected_in || static_cast<int64_t>(w->element_count()) != batch * in * out ||
        static_cast<int64_t>(b->element_count()) != batch * out)
      return ffi::Error::InvalidArgument("lopt mlp: layer " + std::to_string(l) + " does not fit its input");
    weights[l] = w->typed_data();
    biases[l] = b->typed_data();
    fan_in[l] = in;
    fan_out[l] = out;
    width = std::max(width, out);
  }
  if (fan_out.back() < 2) return ffi::Error::InvalidArgument("lopt mlp: the last layer needs two outputs");

  std::vector<float*> outputs(2 * num_tensors);
  for (int64_t r = 0; r < 2 * num_tensors; ++r) {
    auto out = rets.get<ffi::Buffer<ffi::F32>>(r);
    if (out.has_error()) return out.error();
    if (static_cast<int64_t>((*out)->element_count()) != batch * sizes[r / 2])
      return ffi::Error::InvalidArgument("lopt mlp: a result does not match its tensor");
    outputs[r] = (*out)->typed_data();
  }

  std::unique_ptr<Vec[]> ping(new Vec[width]), pong(new Vec[width]);
  std::vector<Layer> layers(num_layers);
  for (int64_t e = 0; e < batch; ++e) {
    for (int64_t l = 0; l < num_layers; ++l)
      layers[l] = {weights[l] + e * fan_in[l] * fan_out[l], biases[l] + e * fan_out[l], fan_in[l], fan_out[l]};
    for (int64_t t = 0; t < num_tensors; ++t) {
      const int64_t n = sizes[t];
      const float* const* x = inputs.data() + t * num_features;
      float* dir = outputs[2 * t] + e * n;
      float* mag = outputs[2 * t + 1] + e * n;
      for (int64_t n0 = 0; n0 < n; n0 += kLanes) {
        const int64_t lanes = std::min(kLanes, n - n0);
        for (int64_t f = 0; f < num_features; ++f) {
          if (lanes < kLanes) ping[f] = Vec{};
          std::memcpy(&ping[f], x[f] + e * n + n0, lanes * sizeof(float));
        }
        Vec *in = ping.get(), *out = pong.get();
        for (int64_t l = 0; l + 1 < num_layers; ++l) {
          Dense(in, layers[l], fan_out[l], true, out);
          std::swap(in, out);
        }
        Dense(in, layers.back(), 2, false, out);
        std::memcpy(dir + n0, &out[0], lanes * sizeof(float));
        std::memcpy(mag + n0, &out[1], lanes * sizeof(float));
      }
    }
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(LoptMlpForward, Forward,
                              ffi::Ffi::Bind()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<int64_t>("num_tensors")
                                  .Attr<int64_t>("num_features"));

// Final logit soft-capping (gemma2's final_logit_softcapping): the logits
// llama.cpp computes are c tanh(W z / c), and the head update adds B u after
// them (as the adapter's join at inference adds it to result_output). The
// gradient of W's part is then weighted by the cap's slope 1 - tanh(W z / c)^2.
#include "HeadLoss.hpp"

namespace mobillm {

ggml_tensor* capLogits(ggml_context* ctx, ggml_tensor* logits, float cap, ggml_tensor** slope) {
  ggml_tensor* t = ggml_tanh(ctx, ggml_scale(ctx, logits, 1.0f / cap));
  if (slope != nullptr) *slope = ggml_scale_bias(ctx, ggml_sqr(ctx, t), -1.0f, 1.0f);  // 1 - t^2
  return ggml_scale(ctx, t, cap);
}

float capSlope(const HeadWeights& hw, const float* b, int64_t k, const float* uj, int64_t v, float finalLogit) {
  if (hw.softCap <= 0.0f) return 1.0f;
  float capped = finalLogit;
  for (int64_t c = 0; c < k; ++c) capped -= b[v * k + c] * uj[c];
  const float t = capped / hw.softCap;
  return 1.0f - t * t;
}

}  // namespace mobillm

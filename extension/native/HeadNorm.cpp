// The model's final norm on the device's head (headDescription.ts says which):
// RMSNorm z = y / rms(y) * w, or LayerNorm z = (y - mean(y)) / std(y) * w + b
// (starcoder2), and the gradient at y back through it:
//   RMSNorm    dy = inv (dn - xhat mean(dn xhat))
//   LayerNorm  dy = inv (dn - mean(dn) - xhat mean(dn xhat))
// with dn = dL/dz * w and inv = 1 / rms or 1 / std.
#include <cmath>

#include "HeadLoss.hpp"

namespace mobillm {

void finalNorm(const HeadWeights& hw, float eps, const float* y, int64_t n, float* z, float* xhat, float* inv) {
  const int64_t d = hw.d;
  for (int64_t j = 0; j < n; ++j) {
    const float* yj = y + j * d;
    double mean = 0;
    if (hw.layerNorm) {
      for (int64_t i = 0; i < d; ++i) mean += yj[i];
      mean /= static_cast<double>(d);
    }
    double ss = 0;
    for (int64_t i = 0; i < d; ++i) ss += (yj[i] - mean) * (yj[i] - mean);
    inv[j] = 1.0f / std::sqrt(static_cast<float>(ss / static_cast<double>(d)) + eps);
    for (int64_t i = 0; i < d; ++i) {
      xhat[j * d + i] = static_cast<float>(yj[i] - mean) * inv[j];
      z[j * d + i] = xhat[j * d + i] * hw.norm[i] + (hw.layerNorm ? hw.normBias[i] : 0.0f);
    }
  }
}

void finalNormBackward(const HeadWeights& hw, const float* dn, const float* xhat, float inv, float* grad) {
  const int64_t d = hw.d;
  double dot = 0, sum = 0;
  for (int64_t i = 0; i < d; ++i) {
    dot += static_cast<double>(dn[i]) * xhat[i];
    sum += dn[i];
  }
  const float mean = static_cast<float>(dot / static_cast<double>(d));
  const float center = hw.layerNorm ? static_cast<float>(sum / static_cast<double>(d)) : 0.0f;
  for (int64_t i = 0; i < d; ++i) grad[i] = inv * (dn[i] - center - xhat[i] * mean);
}

}  // namespace mobillm

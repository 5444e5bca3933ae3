// The side network's forward pass on the device, run inside llama.cpp's eval
// callback. It must match server/training/SideNetwork.ts (test vectors from
// the server code check it): for each tapped layer k, for each token row,
//   a  = h Down_k                        (d -> r)
//   x  = (1 - mu_k) a + mu_k s           (mu_k = sigmoid(alpha_k / T))
//   s  = x + gelu_tanh(rms(x) Mid_k) Up_k
// and at the last layer, delta = s Out (r -> d) is added to l_out-<L-1>.
#pragma once

#include <cmath>
#include <cstring>
#include <vector>

namespace mobillm {

struct SideNet {
  int d = 0, r = 0, b = 0, nLayer = 0;
  float adapterEps = 1e-6f;
  std::vector<int> slotOfLayer;             // [nLayer] -> k or -1
  std::vector<std::vector<float>> down;     // [k] [d][r]
  std::vector<std::vector<float>> mid;      // [k] [r][b]
  std::vector<std::vector<float>> up;       // [k] [b][r]
  std::vector<float> mu;                    // [k]
  std::vector<float> out;                   // [r][d]

  // One ladder step for one token: s (r floats) is read and replaced.
  void step(int k, const float* h, float* s, bool first) const {
    std::vector<float> a(r, 0.0f), x(r), pre(b, 0.0f), u(r, 0.0f);
    const float* D = down[k].data();
    for (int i = 0; i < d; ++i) {
      const float hi = h[i];
      const float* row = D + static_cast<size_t>(i) * r;
      for (int j = 0; j < r; ++j) a[j] += hi * row[j];
    }
    const float m = mu[k];
    double ss = 0;
    for (int j = 0; j < r; ++j) {
      x[j] = (1.0f - m) * a[j] + (first ? 0.0f : m * s[j]);
      ss += static_cast<double>(x[j]) * x[j];
    }
    const float inv = 1.0f / std::sqrt(static_cast<float>(ss / r) + adapterEps);
    const float* M = mid[k].data();
    for (int j = 0; j < r; ++j) {
      const float nj = x[j] * inv;
      const float* row = M + static_cast<size_t>(j) * b;
      for (int c = 0; c < b; ++c) pre[c] += nj * row[c];
    }
    const float* U = up[k].data();
    const float kC = 0.7978845608028654f;  // sqrt(2 / pi)
    for (int c = 0; c < b; ++c) {
      const float p = pre[c];
      const float g = 0.5f * p * (1.0f + std::tanh(kC * (p + 0.044715f * p * p * p)));
      const float* row = U + static_cast<size_t>(c) * r;
      for (int j = 0; j < r; ++j) u[j] += g * row[j];
    }
    for (int j = 0; j < r; ++j) s[j] = x[j] + u[j];
  }

  // h += s Out, for one token.
  void addDelta(const float* s, float* h) const {
    for (int j = 0; j < r; ++j) {
      const float sj = s[j];
      const float* row = out.data() + static_cast<size_t>(j) * d;
      for (int i = 0; i < d; ++i) h[i] += sj * row[i];
    }
  }
};

// Side-network state of one llama_decode call (one micro-batch).
struct SideRun {
  const SideNet* net = nullptr;
  int rows = 0;                     // tokens in the micro-batch
  std::vector<int> outputRows;      // micro-batch index of each output row, in order
  std::vector<float> s;             // [rows][r]
  std::vector<bool> started;        // [rows]: has the ladder begun for this row

  void reset(const SideNet* n, int nRows, std::vector<int> outputs) {
    net = n;
    rows = nRows;
    outputRows = std::move(outputs);
    s.assign(static_cast<size_t>(nRows) * n->r, 0.0f);
    started.assign(static_cast<size_t>(nRows), false);
  }

  // Applies tapped layer `layer` to its output tensor data [nRowsInTensor][d].
  // Layers below the last hold every row; the last holds output rows only,
  // and receives delta in place.
  void apply(int layer, float* data, int nRowsInTensor) {
    const int k = net->slotOfLayer[layer];
    const bool last = layer == net->nLayer - 1;
    const int r = net->r;
    for (int j = 0; j < nRowsInTensor; ++j) {
      const int row = last ? outputRows[j] : j;
      float* h = data + static_cast<size_t>(j) * net->d;
      float* sr = s.data() + static_cast<size_t>(row) * r;
      net->step(k, h, sr, !started[row]);
      started[row] = true;
      if (last) net->addDelta(sr, h);
    }
  }
};

}  // namespace mobillm

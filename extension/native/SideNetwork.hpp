// The side network's forward pass on the device, run inside llama.cpp's eval
// callback. It must match server/training/onnx/sideGraphs.ts (the parity
// tests check it): for each tapped layer k, for each token row,
//   a  = h Down_k                        (d -> r; side network 2: rms(h) Down_k)
//   x  = (1 - mu_k) a + mu_k s           (mu_k = sigmoid(alpha_k / T))
//   side network 2, its first attentionBlocks blocks (common/AdapterConfig.ts
//   attentionBlocks() says which): causal multi-head self-attention
//      within the token's sequence, RoPE by position, over rms(x):
//   x  = x + attention(rms(x) Wq, rms(x) Wk, rms(x) Wv) Wo
//   s  = x + gelu_tanh(rms(x) Mid_k) Up_k
// and at the last layer, delta = s Out (r -> d; side network 2: rms(h) s Out, h the
// layer's own output) is added to l_out-<L-1>; or, for an adapter that joins
// after the final norm, delta = s Out is added to result_norm (the normed
// hidden state the head reads; divided by the model's logit multiplier m,
// which training folds into the norm's weight).
// With a head update (headRank k > 0), the logits llama.cpp computes become
// W z + B (A^T z): u = z A is taken from result_norm (after any delta joined
// there) and B u is added to result_output's rows.
// The keys and values of earlier tokens live in a SideCache kept in step
// with llama.cpp's own memory (same sequences, same positions).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <vector>

namespace mobillm {

// Constants this side shares with the TypeScript one; the addon exports them
// (`constants`) and a unit test holds them equal to TypeScript's: ROPE_BASE to
// server/training/sideNetworkSpec.ts's, MAX_HEAD_RANK to the job setting
// headRank's largest value (common/jobSettings.ts).
constexpr float ROPE_BASE = 10000.0f;
constexpr int MAX_HEAD_RANK = 16;

struct SideNet {
  int d = 0, r = 0, b = 0, nLayer = 0;
  int sideNetwork = 1;                      // the design, named as the setting is: 1 per token, 2 with attention
  int attentionBlocks = 0;                  // blocks 0..attentionBlocks-1 attend (TypeScript derives the number)
  int attentionHeads = 1, width = 0;        // attention heads of `width` = r / attentionHeads
  bool joinAfterNorm = false;               // delta joins result_norm, not l_out-<L-1>
  float logitMultiplier = 1.0f;             // the model's (headDescription.ts): training folds it into the norm, so result_norm is m times smaller than the head's input
  float adapterEps = 1e-6f;
  float ropeBase = ROPE_BASE;
  std::vector<double> ropeInvFreq;          // [width/2]: ropeBase^(-2i/width), set once by setHeads
  std::vector<int> slotOfLayer;             // [nLayer] -> k or -1
  std::vector<std::vector<float>> down;     // [k] [d][r]
  std::vector<std::vector<float>> mid;      // [k] [r][b]
  std::vector<std::vector<float>> up;       // [k] [b][r]
  std::vector<std::vector<float>> wq, wk, wv, wo;  // [k] [r][r]; empty where block k does not attend
  std::vector<float> mu;                    // [k]
  std::vector<float> out;                   // [r][d]
  int headRank = 0, vocab = 0;              // the head update (headRank 0: none) and the vocabulary it covers
  std::vector<float> headA;                 // [d][headRank]
  std::vector<float> headB;                 // [vocab][headRank], one row per vocabulary entry

  bool attends(int k) const { return k < attentionBlocks; }

  // The attention head split and its RoPE frequencies (computed once, not per token).
  void setAttentionHeads(int h) {
    attentionHeads = h;
    width = r / h;
    ropeInvFreq.resize(static_cast<size_t>(width / 2));
    for (int i = 0; i < width / 2; ++i) ropeInvFreq[i] = std::pow(static_cast<double>(ropeBase), -2.0 * i / width);
  }

  // y[0..n) = x[0..m) M for M [m][n] row-major.
  static void matvec(const float* x, const float* M, int m, int n, float* y) {
    std::fill(y, y + n, 0.0f);
    for (int i = 0; i < m; ++i) {
      const float xi = x[i];
      const float* row = M + static_cast<size_t>(i) * n;
      for (int j = 0; j < n; ++j) y[j] += xi * row[j];
    }
  }

  // Root mean square of x [n] (with the adapter's epsilon).
  float rms(const float* x, int n) const {
    double ss = 0;
    for (int i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
    return std::sqrt(static_cast<float>(ss / n) + adapterEps);
  }

  // out = x / rms(x), over r values.
  void rmsNorm(const float* x, float* out) const {
    const float inv = 1.0f / rms(x, r);
    for (int j = 0; j < r; ++j) out[j] = x[j] * inv;
  }

  // x = (1 - mu) h Down + mu s (s ignored for the first tapped layer); side network 2 reads h / rms(h).
  void ladderInput(int k, const float* h, const float* s, bool first, float* x) const {
    std::vector<float> a(r);
    if (sideNetwork == 2) {
      std::vector<float> unit(h, h + d);
      const float inv = 1.0f / rms(h, d);
      for (float& v : unit) v *= inv;
      matvec(unit.data(), down[k].data(), d, r, a.data());
    } else {
      matvec(h, down[k].data(), d, r, a.data());
    }
    const float m = mu[k];
    for (int j = 0; j < r; ++j) x[j] = (1.0f - m) * a[j] + (first ? 0.0f : m * s[j]);
  }

  // s = x + gelu(rms(x) Mid) Up.
  void mlp(int k, const float* x, float* s) const {
    std::vector<float> n(r), pre(b), u(r);
    rmsNorm(x, n.data());
    matvec(n.data(), mid[k].data(), r, b, pre.data());
    const float kC = 0.7978845608028654f;  // sqrt(2 / pi)
    for (int c = 0; c < b; ++c) {
      const float p = pre[c];
      pre[c] = 0.5f * p * (1.0f + std::tanh(kC * (p + 0.044715f * p * p * p)));
    }
    matvec(pre.data(), up[k].data(), b, r, u.data());
    for (int j = 0; j < r; ++j) s[j] = x[j] + u[j];
  }

  // Rotates each head's pairs (i, i + width/2) of v [r] by position pos.
  void rope(float* v, int pos) const {
    const int half = width / 2;
    for (int h = 0; h < attentionHeads; ++h) {
      float* e = v + static_cast<size_t>(h) * width;
      for (int i = 0; i < half; ++i) {
        const double angle = pos * ropeInvFreq[i];
        const float c = static_cast<float>(std::cos(angle)), sn = static_cast<float>(std::sin(angle));
        const float x1 = e[i], x2 = e[i + half];
        e[i] = x1 * c - x2 * sn;
        e[i + half] = x2 * c + x1 * sn;
      }
    }
  }

  // h += s Out, for one token (side network 2 joining before the norm: h += rms(h) s Out).
  void addDelta(const float* s, float* h) const {
    const float scale = sideNetwork == 2 && !joinAfterNorm ? rms(h, d) : 1.0f;
    for (int j = 0; j < r; ++j) {
      const float sj = s[j] * scale;
      const float* row = out.data() + static_cast<size_t>(j) * d;
      for (int i = 0; i < d; ++i) h[i] += sj * row[i];
    }
  }
};

// The keys (rotated) and values of every token the side network has seen,
// per llama.cpp sequence and attending block, with their positions. Changed
// only where llama.cpp's memory changes the same way (DecodeWorker).
class SideCache {
 public:
  struct Block {
    std::vector<int> pos;    // [t]
    std::vector<float> k;    // [t][r]
    std::vector<float> v;    // [t][r]
  };

  void clear() { seqs_.clear(); }

  // Drops every entry of `seq` at position >= from (llama_memory_seq_rm(seq, from, -1)).
  void removeFrom(int seq, int from) {
    auto it = seqs_.find(seq);
    if (it == seqs_.end()) return;
    for (Block& blk : it->second) {
      size_t keep = 0;
      const size_t r = blk.pos.empty() ? 0 : blk.k.size() / blk.pos.size();
      for (size_t t = 0; t < blk.pos.size(); ++t) {
        if (blk.pos[t] >= from) continue;
        if (keep != t) {
          blk.pos[keep] = blk.pos[t];
          std::memmove(&blk.k[keep * r], &blk.k[t * r], r * sizeof(float));
          std::memmove(&blk.v[keep * r], &blk.v[t * r], r * sizeof(float));
        }
        ++keep;
      }
      blk.pos.resize(keep);
      blk.k.resize(keep * r);
      blk.v.resize(keep * r);
    }
  }

  // Tokens of `seq` at positions below `upTo`, all present in every attending block of `net`: the cache covers that prefix.
  bool covers(int seq, int upTo, const SideNet& net) const {
    if (upTo <= 0 || net.attentionBlocks == 0) return true;
    auto it = seqs_.find(seq);
    if (it == seqs_.end() || it->second.size() < net.wq.size()) return false;
    for (size_t k = 0; k < net.wq.size(); ++k) {
      if (!net.attends(static_cast<int>(k))) continue;
      size_t below = 0;
      for (int p : it->second[k].pos) below += p < upTo ? 1 : 0;
      if (below != static_cast<size_t>(upTo)) return false;
    }
    return true;
  }

  Block& block(int seq, int k, size_t blocks) {
    std::vector<Block>& bs = seqs_[seq];
    if (bs.size() < blocks) bs.resize(blocks);
    return bs[k];
  }

 private:
  std::map<int, std::vector<Block>> seqs_;
};

// Side-network state of one llama_decode call (one micro-batch).
struct SideRun {
  const SideNet* net = nullptr;
  SideCache* cache = nullptr;
  int rows = 0;                     // tokens in the micro-batch
  std::vector<int> outputRows;      // micro-batch index of each output row, in order
  std::vector<int> pos, seq;        // [rows]: each row's position and sequence
  std::vector<float> s;             // [rows][r]
  std::vector<float> pending;       // joinAfterNorm: [output rows][d], delta waiting for result_norm
  std::vector<bool> started;        // [rows]: has the ladder begun for this row
  std::vector<float> headU;         // head update: [output rows][headRank], u = z A from result_norm

  void reset(const SideNet* n, SideCache* c, int nRows, std::vector<int> outputs, const int* positions, const int* sequences) {
    net = n;
    cache = c;
    rows = nRows;
    outputRows = std::move(outputs);
    pos.assign(positions, positions + nRows);
    seq.assign(sequences, sequences + nRows);
    s.assign(static_cast<size_t>(nRows) * n->r, 0.0f);
    started.assign(static_cast<size_t>(nRows), false);
    pending.clear();
    headU.clear();
  }

  // Head update, first half: u = z A for result_norm's rows z [nRowsInTensor][d].
  void projectForHead(const float* z, int nRowsInTensor) {
    const int k = net->headRank;
    headU.assign(static_cast<size_t>(nRowsInTensor) * k, 0.0f);
    for (int j = 0; j < nRowsInTensor; ++j) SideNet::matvec(z + static_cast<size_t>(j) * net->d, net->headA.data(), net->d, k, &headU[static_cast<size_t>(j) * k]);
    if (net->logitMultiplier != 1.0f) for (float& u : headU) u *= net->logitMultiplier;  // u = (m z) A, as trained
  }

  // Head update, second half: logits [nRowsInTensor][nVocab] += B u; false if the rows or the vocabulary do not match.
  bool addToLogits(float* logits, int nRowsInTensor, int nVocab) {
    const int k = net->headRank;
    if (nVocab != net->vocab || headU.size() != static_cast<size_t>(nRowsInTensor) * k) return false;
    for (int j = 0; j < nRowsInTensor; ++j) {
      const float* u = &headU[static_cast<size_t>(j) * k];
      float* row = logits + static_cast<size_t>(j) * nVocab;
      for (int v = 0; v < nVocab; ++v) {
        const float* bv = &net->headB[static_cast<size_t>(v) * k];
        float dot = 0;
        for (int i = 0; i < k; ++i) dot += bv[i] * u[i];
        row[v] += dot;
      }
    }
    headU.clear();
    return true;
  }

  // Applies tapped layer `layer` to its output tensor data [nRowsInTensor][d].
  // Layers below the last hold every row; the last holds output rows only,
  // and receives delta in place (its block never attends, so output rows suffice).
  void apply(int layer, float* data, int nRowsInTensor) {
    const int k = net->slotOfLayer[layer];
    const bool last = layer == net->nLayer - 1;
    const int r = net->r;
    std::vector<float> x(static_cast<size_t>(nRowsInTensor) * r);
    for (int j = 0; j < nRowsInTensor; ++j) {
      const int row = last ? outputRows[j] : j;
      float* sr = s.data() + static_cast<size_t>(row) * r;
      net->ladderInput(k, data + static_cast<size_t>(j) * net->d, sr, !started[row], &x[static_cast<size_t>(j) * r]);
    }
    if (net->attends(k)) attend(k, x.data());
    if (last && net->joinAfterNorm) pending.assign(static_cast<size_t>(nRowsInTensor) * net->d, 0.0f);
    for (int j = 0; j < nRowsInTensor; ++j) {
      const int row = last ? outputRows[j] : j;
      float* sr = s.data() + static_cast<size_t>(row) * r;
      net->mlp(k, &x[static_cast<size_t>(j) * r], sr);
      started[row] = true;
      // Joining after the norm, delta waits in `pending` for result_norm.
      if (last) net->addDelta(sr, (net->joinAfterNorm ? pending.data() : data) + static_cast<size_t>(j) * net->d);
    }
  }

  // joinAfterNorm: adds the last layer's pending delta to result_norm's data
  // [nRowsInTensor][d] (the same output rows); false if the rows do not match.
  bool applyAfterNorm(float* data, int nRowsInTensor) {
    if (pending.size() != static_cast<size_t>(nRowsInTensor) * net->d) return false;
    // Trained as m z + delta (the multiplier folded into the norm); llama.cpp multiplies result_norm's logits by m.
    const float inv = 1.0f / net->logitMultiplier;
    for (size_t i = 0; i < pending.size(); ++i) data[i] += pending[i] * inv;
    pending.clear();
    return true;
  }

 private:
  // x [rows][r] += attention over each row's sequence, earlier positions and its own; the rows' keys and values join the cache first.
  void attend(int k, float* x) {
    const int r = net->r, H = net->attentionHeads, e = net->width;
    const size_t blocks = net->wq.size();
    std::vector<float> n(r), q(static_cast<size_t>(rows) * r), kv(r), o(r), w(r);
    for (int j = 0; j < rows; ++j) {
      net->rmsNorm(x + static_cast<size_t>(j) * r, n.data());
      SideNet::matvec(n.data(), net->wq[k].data(), r, r, &q[static_cast<size_t>(j) * r]);
      net->rope(&q[static_cast<size_t>(j) * r], pos[j]);
      SideCache::Block& blk = cache->block(seq[j], k, blocks);
      blk.pos.push_back(pos[j]);
      SideNet::matvec(n.data(), net->wk[k].data(), r, r, kv.data());
      net->rope(kv.data(), pos[j]);
      blk.k.insert(blk.k.end(), kv.begin(), kv.end());
      SideNet::matvec(n.data(), net->wv[k].data(), r, r, kv.data());
      blk.v.insert(blk.v.end(), kv.begin(), kv.end());
    }
    const float scale = 1.0f / std::sqrt(static_cast<float>(e));
    std::vector<float> scores;
    for (int j = 0; j < rows; ++j) {
      const SideCache::Block& blk = cache->block(seq[j], k, blocks);
      const size_t T = blk.pos.size();
      const float* qj = &q[static_cast<size_t>(j) * r];
      std::fill(o.begin(), o.end(), 0.0f);
      scores.assign(T, 0.0f);
      for (int h = 0; h < H; ++h) {
        const size_t off = static_cast<size_t>(h) * e;
        float mx = -INFINITY;
        for (size_t t = 0; t < T; ++t) {
          if (blk.pos[t] > pos[j]) continue;
          float dot = 0;
          const float* kt = &blk.k[t * r + off];
          for (int i = 0; i < e; ++i) dot += qj[off + i] * kt[i];
          scores[t] = dot * scale;
          mx = std::max(mx, scores[t]);
        }
        double sum = 0;
        for (size_t t = 0; t < T; ++t) {
          if (blk.pos[t] > pos[j]) continue;
          scores[t] = std::exp(scores[t] - mx);
          sum += scores[t];
        }
        for (size_t t = 0; t < T; ++t) {
          if (blk.pos[t] > pos[j]) continue;
          const float p = static_cast<float>(scores[t] / sum);
          const float* vt = &blk.v[t * r + off];
          for (int i = 0; i < e; ++i) o[off + i] += p * vt[i];
        }
      }
      SideNet::matvec(o.data(), net->wo[k].data(), r, r, w.data());
      float* xj = x + static_cast<size_t>(j) * r;
      for (int i = 0; i < r; ++i) xj[i] += w[i];
    }
  }
};

}  // namespace mobillm

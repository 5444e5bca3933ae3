// The sparse tokens' product A = sum_v p_v W_v over their kept rows (see HeadLoss.hpp for the rule).
#include <algorithm>
#include <cmath>
#include <thread>
#include <utility>
#include <vector>

#include "HeadLoss.hpp"

namespace mobillm {

void HeadLoss::SparseProducts(const HeadWeights& hw, const HeadUpdateState& hu, const std::vector<float>& u, const std::vector<int64_t>& tokens,
                              const std::vector<std::vector<std::pair<int32_t, float>>>& candidates, const std::vector<double>& R, const std::vector<double>& tail, float* A) const {
  const int64_t d = hw.d;
  // The tokens' rows lie all over the vocabulary: it is walked a span at a time (HeadWeights::spanRows), each span's pages
  // released when every token is past it. Each token's rows ascend (the first pass found them chunk by chunk), so a cursor
  // per token walks them.
  const int64_t span = hw.spanRows();
  std::vector<size_t> next(tokens.size(), 0);
  const size_t workers = std::min<size_t>(static_cast<size_t>(threads_), tokens.size());
  for (int64_t v0 = 0; v0 < hw.vocab; v0 += span) {
    const int64_t v1 = std::min(hw.vocab, v0 + span);
    auto work = [&](size_t from, size_t step) {
      std::vector<float> r(static_cast<size_t>(d));
      for (size_t k = from; k < tokens.size(); k += step) {
        const int64_t j = tokens[k];
        float* Aj = A + j * d;
        const auto& cj = candidates[static_cast<size_t>(j)];
        size_t& at = next[k];
        for (; at < cj.size() && cj[at].first < v1; ++at) {
          const auto& e = cj[at];
          const float pv = static_cast<float>(std::exp(static_cast<double>(e.second) - R[j])) * capSlope(hw, hu.b.data(), hu.rank, u.data() + j * hu.rank, e.first, e.second);
          hw.rowToFloat(e.first, r.data());
          for (int64_t i = 0; i < d; ++i) Aj[i] += pv * r[i];
        }
        if (v1 < hw.vocab) continue;
        const float rest = static_cast<float>(tail[j]);
        for (int64_t i = 0; i < d; ++i) Aj[i] += rest * hw.meanRow[i];
      }
    };
    if (workers <= 1) {
      work(0, 1);
    } else {
      std::vector<std::thread> pool;
      for (size_t t = 1; t < workers; ++t) pool.emplace_back(work, t, workers);
      work(0, workers);
      for (auto& th : pool) th.join();
    }
    hw.release(v0, v1);
  }
}

}  // namespace mobillm

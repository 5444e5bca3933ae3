// The head's rows transposed into Q8_0 for the dense product W_c^T p (HeadCompute.cpp).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <thread>
#include <vector>

#include "HeadLoss.hpp"

namespace mobillm {

// W_c^T for the chunk [v0, v0 + c) of the head: [cp, d] in Q8_0 blocks of 32 vocabulary rows (cp = c rounded
// up to 32; the padding rows are zero), written here a tile of 32 rows at a time on `threads` threads: each
// tile's rows read once and quantized column by column by ggml's Q8_0 rule. (ggml's dequantize,
// transpose, pad and quantize of the whole chunk cost more than the product: with them, 256 dense tokens over
// Qwen2.5-0.5B's head took 4.8 s, now 3.0 s.)
void transposeToQ8(const HeadWeights& hw, int64_t v0, int64_t c, int threads, std::vector<uint8_t>* out) {
  const int64_t d = hw.d, tiles = (c + 31) / 32;
  const size_t block = ggml_type_size(GGML_TYPE_Q8_0);
  out->resize(static_cast<size_t>(tiles * d) * block);
  auto work = [&](int64_t from, int64_t step) {
    std::vector<float> rows(static_cast<size_t>(32 * d));
    for (int64_t t = from; t < tiles; t += step) {
      const int64_t n = std::min<int64_t>(32, c - t * 32);
      for (int64_t r = 0; r < n; ++r) hw.rowToFloat(v0 + t * 32 + r, rows.data() + r * d);
      std::fill(rows.begin() + n * d, rows.end(), 0.0f);
      // Row i of W_c^T, block t: the tile's 32 values of column i, by Q8_0's rule (scale amax / 127, as a half;
      // values rounded to nearest, ties to even, as ggml's own quantizer rounds them).
      for (int64_t i = 0; i < d; ++i) {
        float amax = 0.0f;
        for (int64_t r = 0; r < 32; ++r) amax = std::max(amax, std::fabs(rows[r * d + i]));
        const float scale = amax / 127.0f, inv = scale != 0.0f ? 1.0f / scale : 0.0f;
        uint8_t* b = out->data() + static_cast<size_t>(i * tiles + t) * block;
        const ggml_fp16_t half = ggml_fp32_to_fp16(scale);
        std::memcpy(b, &half, sizeof half);
        for (int64_t r = 0; r < 32; ++r) b[sizeof half + r] = static_cast<uint8_t>(static_cast<int8_t>(std::lrintf(rows[r * d + i] * inv)));
      }
    }
  };
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(threads, tiles));
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < workers; ++t) pool.emplace_back(work, t, workers);
  work(0, workers);
  for (auto& th : pool) th.join();
}

}  // namespace mobillm

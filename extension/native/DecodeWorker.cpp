// The decode worker and the eval callback (see DecodeWorker.hpp).
#include "DecodeWorker.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>

#include "ggml-backend.h"

#include "Backbone.hpp"
#include "codedError.hpp"

namespace mobillm {

namespace {

// MOBILLM_TENSOR_COPY=1: read and write every tensor through ggml's backend
// API even where its buffer is the host's, so the path a Metal or GPU buffer
// takes is tested on the CPU backend.
bool copyTensors() {
  static const bool on = [] {
    const char* v = std::getenv("MOBILLM_TENSOR_COPY");
    return v != nullptr && std::strcmp(v, "1") == 0;
  }();
  return on;
}

// Runs `f` on t's float32 values: in place where its buffer is the host's;
// otherwise on a copy read through ggml_backend_tensor_get and, when `write`,
// written back with ggml_backend_tensor_set (a Metal or GPU buffer has no
// usable `data` pointer on this side).
template <class F>
bool withFloats(ggml_tensor* t, std::vector<float>& scratch, bool write, F f) {
  if (ggml_backend_buffer_is_host(t->buffer) && !copyTensors()) return f(static_cast<float*>(t->data));
  scratch.resize(static_cast<size_t>(ggml_nelements(t)));
  ggml_backend_tensor_get(t, scratch.data(), 0, ggml_nbytes(t));
  if (!f(scratch.data())) return false;
  if (write) ggml_backend_tensor_set(t, scratch.data(), 0, ggml_nbytes(t));
  return true;
}

}  // namespace

bool evalCallback(struct ggml_tensor* t, bool ask, void* userData) {
  CaptureState* st = *static_cast<CaptureState**>(userData);
  if (st == nullptr) return !ask;  // not capturing: want nothing, keep going
  const SideNet* net = st->side != nullptr ? st->side->net : nullptr;
  const auto f32Rows = [](const ggml_tensor* x, int64_t width) {
    return x->type == GGML_TYPE_F32 && ggml_is_contiguous(x) && x->ne[0] == width && x->buffer != nullptr;
  };
  if (net != nullptr && (net->joinAfterNorm || net->headRank > 0) && std::strcmp(t->name, "result_norm") == 0) {
    if (ask) return true;
    const int rows = static_cast<int>(t->ne[1]);
    // The side network's delta joins the normed hidden state the head reads; the head update reads it after.
    const bool ok = f32Rows(t, net->d) && withFloats(t, st->scratch, net->joinAfterNorm, [&](float* z) {
      if (net->joinAfterNorm && !st->side->applyAfterNorm(z, rows)) return false;
      if (net->headRank > 0) st->side->projectForHead(z, rows);
      return true;
    });
    if (!ok) st->badShape = true;
    return ok;
  }
  if (net != nullptr && net->headRank > 0 && std::strcmp(t->name, "result_output") == 0) {
    if (ask) return true;
    const bool ok = f32Rows(t, net->vocab) && withFloats(t, st->scratch, true, [&](float* logits) {
      return st->side->addToLogits(logits, static_cast<int>(t->ne[1]), net->vocab);
    });
    if (!ok) st->badShape = true;
    return ok;
  }
  if (std::strncmp(t->name, "l_out-", 6) != 0) return !ask;
  const int layer = std::atoi(t->name + 6);
  const bool inRange = layer >= 0 && layer < st->nLayer;
  const int slot = inRange && !st->slotOfLayer.empty() ? st->slotOfLayer[layer] : -1;
  const bool side = st->side != nullptr && layer >= 0 && layer < st->side->net->nLayer && st->side->net->slotOfLayer[layer] >= 0;
  if (ask) return slot >= 0 || side;
  if (slot < 0 && !side) return true;

  const int nEmbd = static_cast<int>(t->ne[0]);
  if (t->type != GGML_TYPE_F32 || (slot >= 0 && nEmbd != st->nEmbd) || !ggml_is_contiguous(t) || t->buffer == nullptr) {
    st->badShape = true;
    return false;
  }
  const size_t rows = static_cast<size_t>(t->ne[1]);
  if (slot >= 0) {
    if (st->rowsWritten[slot] + rows > st->rowsExpected) {
      st->overflow = true;
      return false;
    }
    // ggml's backend API reads any buffer (a plain copy from the host's).
    ggml_backend_tensor_get(t, st->destination[slot] + st->rowsWritten[slot] * nEmbd, 0, rows * nEmbd * sizeof(float));
    st->rowsWritten[slot] += rows;
  }
  if (side) {
    // Changing l_out-<L-1> in place is honoured: llama.cpp's own output norm
    // and head then run on h + delta.
    withFloats(t, st->scratch, true, [&](float* h) {
      st->side->apply(layer, h, static_cast<int>(rows));
      return true;
    });
  }
  // Returning false after the last wanted layer stops the graph: the rest of
  // the layers and the head are skipped. (Aborting instead would also skip the
  // logits copy, but llama.cpp then drops the micro-batch's KV entries, which
  // chunked decoding needs.)
  if (slot >= 0 && layer == st->lastWantedLayer && st->stopAfterLastWanted) return false;
  return true;
}

void DecodeWorker::Execute() {
  const auto started = std::chrono::steady_clock::now();
  Decode();
  seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
}

void DecodeWorker::Decode() {
  llama_context* ctx = bb_->ctx();
  const SideNet* net = bb_->sideNet();
  const int32_t nVocab = llama_vocab_n_tokens(llama_model_get_vocab(bb_->model()));
  const int32_t chunk = static_cast<int32_t>(bb_->nBatch());
  const bool allOutputs = (mode_ == DecodeMode::Capture && needLastLayer) || mode_ == DecodeMode::Loss;
  llama_batch batch = llama_batch_init(chunk, 0, 1);
  // The side network's cache follows llama.cpp's memory step for step.
  SideCache& sideCache = bb_->sideCache();
  if (!keepMemory) {
    llama_memory_clear(llama_get_memory(ctx), true);
    sideCache.clear();
  } else {
    // Continue sequence 0 at startPos: whatever it held from startPos on is dropped (reused prompt prefix).
    llama_memory_seq_rm(llama_get_memory(ctx), 0, startPos, -1);
    sideCache.removeFrom(0, startPos);
    if (net != nullptr && !sideCache.covers(0, startPos, *net)) {
      // The adapter changed since the prefix was decoded: its keys are not here. Start afresh.
      llama_batch_free(batch);
      code_ = "DECODE_FAILED";
      SetError("The side network's cache does not hold the reused prefix; decode the whole text again.");
      return;
    }
  }
  SideRun side;
  if (mode_ == DecodeMode::Capture) state.side = nullptr;
  *bb_->captureSlot() = &state;
  int32_t rc = 0;
  size_t s = 0, t = 0;
  bool cancelled = false;
  while (rc == 0 && s < sequences.size()) {
    if (bb_->cancelRequested()) {  // checked between chunks: a cancel lands within one chunk
      cancelled = true;
      break;
    }
    int32_t n = 0;
    std::vector<int> outputRows, rowPos, rowSeq;
    std::vector<llama_token> chunkTargets;
    while (n < chunk && s < sequences.size()) {
      const auto& seq = sequences[s];
      const bool isOutput = allOutputs || t + 1 == seq.size();
      batch.token[n] = seq[t];
      batch.pos[n] = static_cast<llama_pos>(t) + (mode_ == DecodeMode::Logits ? startPos : 0);
      batch.n_seq_id[n] = 1;
      batch.seq_id[n][0] = static_cast<llama_seq_id>(s);
      batch.logits[n] = isOutput ? 1 : 0;
      rowPos.push_back(batch.pos[n]);
      rowSeq.push_back(static_cast<int>(s));
      if (isOutput) outputRows.push_back(n);
      if (mode_ == DecodeMode::Loss) chunkTargets.push_back(targets[s][t]);
      ++n;
      if (++t == seq.size()) {
        ++s;
        t = 0;
      }
    }
    batch.n_tokens = n;
    if (net != nullptr && mode_ != DecodeMode::Capture) {
      side.reset(net, &sideCache, n, outputRows, rowPos.data(), rowSeq.data());
      state.side = &side;
    }
    rc = llama_decode(ctx, batch);
    if (rc == 0 && mode_ == DecodeMode::Loss) {
      for (int32_t j = 0; j < n; ++j) {
        const float* logits = llama_get_logits_ith(ctx, j);
        float mx = logits[0];
        for (int32_t v = 1; v < nVocab; ++v) mx = std::max(mx, logits[v]);
        double sum = 0;
        for (int32_t v = 0; v < nVocab; ++v) sum += std::exp(static_cast<double>(logits[v] - mx));
        lossSum_ += std::log(sum) + mx - logits[chunkTargets[j]];
        ++lossTokens_;
      }
    }
  }
  if (rc == 0 && !cancelled && mode_ == DecodeMode::Logits) {
    const float* logits = llama_get_logits_ith(ctx, -1);
    lastLogits_.assign(logits, logits + nVocab);
  }
  *bb_->captureSlot() = nullptr;
  if (mode_ != DecodeMode::Logits) {
    llama_memory_clear(llama_get_memory(ctx), true);
    sideCache.clear();
  }
  llama_batch_free(batch);
  if (cancelled) {
    code_ = "CANCELLED";
    SetError("The forward pass was cancelled.");
    return;
  }
  if (rc != 0) {
    code_ = "DECODE_FAILED";
    SetError("llama_decode failed with status " + std::to_string(rc) + ".");
    return;
  }
  if (state.badShape || state.overflow) {
    code_ = "CAPTURE_FAILED";
    SetError("A captured layer had an unexpected shape.");
    return;
  }
  for (size_t k = 0; k < state.rowsWritten.size(); ++k) {
    if (state.rowsWritten[k] != state.rowsExpected) {
      code_ = "CAPTURE_FAILED";
      SetError("A captured layer returned " + std::to_string(state.rowsWritten[k]) + " rows, expected " +
               std::to_string(state.rowsExpected) + ".");
      return;
    }
  }
}

void DecodeWorker::OnOK() {
  bb_->SetBusy(false);
  Napi::Env env = Env();
  switch (mode_) {
    case DecodeMode::Capture:
      deferred_.Resolve(Napi::Number::New(env, seconds_));  // seconds on the worker thread
      break;
    case DecodeMode::Loss: {
      Napi::Object r = Napi::Object::New(env);
      r.Set("lossSum", lossSum_);
      r.Set("tokens", static_cast<double>(lossTokens_));
      r.Set("seconds", seconds_);
      deferred_.Resolve(r);
      break;
    }
    case DecodeMode::Logits: {
      Napi::Float32Array out = Napi::Float32Array::New(env, lastLogits_.size());
      std::memcpy(out.Data(), lastLogits_.data(), lastLogits_.size() * sizeof(float));
      deferred_.Resolve(out);
      break;
    }
  }
}

}  // namespace mobillm

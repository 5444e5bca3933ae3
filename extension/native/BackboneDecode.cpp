// The Backbone's decode entry points: each validates its arguments on the
// JavaScript thread and queues a DecodeWorker.
#include <memory>
#include <string>

#include "Backbone.hpp"
#include "DecodeWorker.hpp"
#include "codedError.hpp"
#include "readSequences.hpp"

namespace mobillm {

// capture(sequences: Int32Array[], layers: Int32Array, outputs: Float32Array[],
//         stopEarly: boolean): Promise<number>
// outputs[k] receives layer layers[k] as [sum of sequence lengths][nEmbd],
// sequences concatenated in order. The caller validates sizes; this checks them
// again because a wrong size here would write out of bounds. Captures always
// run the plain backbone (no side network).
Napi::Value Backbone::Capture(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckIdle(env)) return env.Undefined();
  const Napi::Array seqs = info[0].As<Napi::Array>();
  const Napi::Int32Array layers = info[1].As<Napi::Int32Array>();
  const Napi::Array outs = info[2].As<Napi::Array>();
  const bool stopEarly = info[3].ToBoolean().Value();

  const int nLayer = llama_model_n_layer(model_);
  const int nEmbd = llama_model_n_embd(model_);
  const int nVocab = llama_vocab_n_tokens(llama_model_get_vocab(model_));
  std::unique_ptr<DecodeWorker> worker(new DecodeWorker(env, this, info.This().As<Napi::Object>(), DecodeMode::Capture));
  auto fail = [&](const char* code, const std::string& msg) {
    codedError(env, code, msg).ThrowAsJavaScriptException();
    return env.Undefined();
  };
  size_t total = 0;
  if (!readSequences(env, seqs, nVocab, nSeqMax_, worker->sequences, total)) return env.Undefined();
  if (total > nCtx_) return fail("CONTEXT_OVERFLOW", "The batch has more tokens than the context holds.");

  CaptureState& st = worker->state;
  st.nLayer = nLayer;
  st.nEmbd = nEmbd;
  st.slotOfLayer.assign(static_cast<size_t>(nLayer), -1);
  st.rowsExpected = total;
  if (layers.ElementLength() != outs.Length()) return fail("BAD_ARGUMENT", "One output per layer is needed.");
  for (size_t k = 0; k < layers.ElementLength(); ++k) {
    const int layer = layers[k];
    if (layer < 0 || layer >= nLayer) return fail("LAYER_OUT_OF_RANGE", "Layer index out of range.");
    if (st.slotOfLayer[layer] >= 0) return fail("BAD_ARGUMENT", "A layer is listed twice.");
    Napi::Float32Array out = outs.Get(static_cast<uint32_t>(k)).As<Napi::Float32Array>();
    if (out.ElementLength() != total * static_cast<size_t>(nEmbd))
      return fail("BAD_ARGUMENT", "An output buffer has the wrong size.");
    st.slotOfLayer[layer] = static_cast<int>(k);
    st.destination.push_back(out.Data());
    st.rowsWritten.push_back(0);
    worker->keepAlive.push_back(Napi::Persistent(out.As<Napi::Object>()));
    if (layer > st.lastWantedLayer) st.lastWantedLayer = layer;
  }
  st.stopAfterLastWanted = stopEarly;
  worker->needLastLayer = st.lastWantedLayer == nLayer - 1;
  return Queue(std::move(worker));
}

// lossOf(sequences: Int32Array[], targets: Int32Array[]): Promise<{lossSum, tokens, seconds}>
// Next-token cross-entropy of every token (with the side network when one is set).
Napi::Value Backbone::LossOf(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckIdle(env)) return env.Undefined();
  const int nVocab = llama_vocab_n_tokens(llama_model_get_vocab(model_));
  std::unique_ptr<DecodeWorker> worker(new DecodeWorker(env, this, info.This().As<Napi::Object>(), DecodeMode::Loss));
  size_t total = 0, totalTargets = 0;
  if (!readSequences(env, info[0].As<Napi::Array>(), nVocab, nSeqMax_, worker->sequences, total)) return env.Undefined();
  if (!readSequences(env, info[1].As<Napi::Array>(), nVocab, nSeqMax_, worker->targets, totalTargets)) return env.Undefined();
  if (totalTargets != total || worker->targets.size() != worker->sequences.size()) {
    codedError(env, "BAD_ARGUMENT", "One target per input token is needed.").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  for (size_t i = 0; i < worker->sequences.size(); ++i) {
    if (worker->targets[i].size() != worker->sequences[i].size()) {
      codedError(env, "BAD_ARGUMENT", "One target per input token is needed.").ThrowAsJavaScriptException();
      return env.Undefined();
    }
  }
  if (total > nCtx_) {
    codedError(env, "CONTEXT_OVERFLOW", "The batch has more tokens than the context holds.").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return Queue(std::move(worker));
}

// logitsAfter(tokens: Int32Array, startPos: number): Promise<Float32Array>
// Continues sequence 0 at startPos (0 starts afresh) and returns the logits of
// the last token. Used for generation.
Napi::Value Backbone::LogitsAfter(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckIdle(env)) return env.Undefined();
  const int nVocab = llama_vocab_n_tokens(llama_model_get_vocab(model_));
  std::unique_ptr<DecodeWorker> worker(new DecodeWorker(env, this, info.This().As<Napi::Object>(), DecodeMode::Logits));
  Napi::Array one = Napi::Array::New(env, 1);
  one.Set(0u, info[0]);
  size_t total = 0;
  if (!readSequences(env, one, nVocab, 1, worker->sequences, total)) return env.Undefined();
  const int64_t startPos = info[1].As<Napi::Number>().Int64Value();
  if (startPos < 0 || static_cast<uint64_t>(startPos) + total > nCtx_) {
    codedError(env, "CONTEXT_OVERFLOW", "The text does not fit the context.").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  worker->startPos = static_cast<int32_t>(startPos);
  worker->keepMemory = startPos > 0;
  return Queue(std::move(worker));
}

Napi::Value Backbone::Queue(std::unique_ptr<DecodeWorker> worker) {
  busy_ = true;
  cancel_.store(false);
  Napi::Promise p = worker->Promise();
  worker.release()->Queue();
  return p;
}

}  // namespace mobillm

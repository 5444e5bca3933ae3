// One decode job on a libuv worker thread, and what llama.cpp's eval
// callback needs while it runs: the capture state (which `l_out-<i>` tensors to
// copy, and where) and the side network to apply to the last layer.
#pragma once

#include <napi.h>

#include <memory>
#include <vector>

#include "ggml.h"
#include "llama.h"

#include "BackboneWorker.hpp"
#include "SideNetwork.hpp"

namespace mobillm {

// What the eval callback needs for one decode. Owned by the worker that runs
// the decode; the Backbone points at it only while that decode runs.
struct CaptureState {
  int nLayer = 0;
  int nEmbd = 0;
  std::vector<int> slotOfLayer;      // [nLayer] -> slot index or -1
  std::vector<float*> destination;   // [slots] -> [rows][nEmbd] float32
  std::vector<size_t> rowsWritten;   // [slots]
  size_t rowsExpected = 0;           // tokens in the decode
  int lastWantedLayer = -1;
  bool stopAfterLastWanted = false;
  bool overflow = false;
  bool badShape = false;
  mobillm::SideRun* side = nullptr;  // the side network of this decode, if any
  std::vector<float> scratch;        // a tensor's values where its buffer is not the host's (Metal, GPUs)
};


// llama.cpp's cb_eval: `userData` points at the backbone's active CaptureState
// slot (null between decodes). Copies wanted layers, applies the side network
// to l_out-<L-1>, and stops the graph after the last wanted layer on request.
bool evalCallback(struct ggml_tensor* t, bool ask, void* userData);

// What one decode job computes.
enum class DecodeMode { Capture, Loss, Logits };

// Runs llama_decode over sequences on a worker thread, in chunks of at most
// nBatch tokens (positions continuing within each sequence; the KV cache
// carries the context between chunks). Chunking bounds llama.cpp's output
// buffer, which it sizes n_outputs x n_vocab floats and zero-fills.
//   Capture: copies the wanted layers of every token (see CaptureState).
//   Loss:    next-token cross-entropy of every token against `targets`.
//   Logits:  one sequence continuing at `startPos`; returns the last token's logits.
// When the backbone holds a side network, it runs inside the same decode.
class DecodeWorker : public BackboneWorker {
 public:
  DecodeWorker(Napi::Env env, Backbone* bb, Napi::Object self, DecodeMode mode)
      : BackboneWorker(env, bb, self, "DECODE_FAILED"), mode_(mode) {}

  std::vector<std::vector<llama_token>> sequences;
  std::vector<std::vector<llama_token>> targets;  // Loss mode
  std::vector<Napi::ObjectReference> keepAlive;
  CaptureState state;
  bool needLastLayer = false;
  int32_t startPos = 0;      // Logits mode
  bool keepMemory = false;   // Logits mode: continue the previous call's sequence

  void Execute() override;

  void Decode();
  void OnOK() override;

 private:
  DecodeMode mode_;
  double seconds_ = 0;
  double lossSum_ = 0;
  size_t lossTokens_ = 0;
  std::vector<float> lastLogits_;
};

}  // namespace mobillm

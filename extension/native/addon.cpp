// MobiLLM native addon: a frozen llama.cpp backbone with per-layer activation
// capture (cb_eval on `l_out-<i>`), ggml dequantization of any GGUF tensor,
// and the trained side network run inside llama.cpp's forward pass (the
// final hidden state gets the side network's delta before llama.cpp's own
// output norm and head). Seen from TypeScript through
// extension/native/NativeAddon.ts only.
//
// The parts:
//   Backbone        the JavaScript object: model, context, side network, entry points
//   readSideNet     an adapter's tensors and constants -> SideNet (SideNetwork.hpp)
//   LoadWorker      model and context loading on a worker thread
//   DecodeWorker    capture, loss and logits decodes on a worker thread, with the
//                   capture state and the eval callback
//   readSequences   the token-sequence argument reader
//   readTensor      GGUF tensors dequantized by ggml
//   quantize        llama.cpp's own quantizer, for test models in users' layouts
//   backends        ggml's CPU backend registration
//   HeadLoss        the model's own head and its loss gradient (label-private training):
//                   HeadWeights (the head through the file's mapping), HeadCompute
//
// Memory: on glibc, blocks of 256 KiB and more are mapped and unmapped one by
// one (M_MMAP_THRESHOLD fixed). By default glibc raises that threshold to the
// largest block freed (up to 32 MiB) and keeps later blocks of that size in
// its heaps once freed; a job frees blocks of several MB per batch (captured
// layers, frames, the head's work), and the heaps then grew the device's peak
// memory by 60-190 MB (bench:label-private, bench:peers).
//
// Threading: every llama_decode runs on a libuv worker thread (AsyncWorker);
// the JavaScript thread only queues work and receives results. A Backbone has
// at most one job in flight; the TypeScript wrapper serialises calls.
// Ownership: a Backbone owns its llama_model and llama_context. dispose() frees
// them at once, or, when a job is in flight, as soon as that job completes.
// Any call after dispose() throws an error with code "DISPOSED".

#include <napi.h>

#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "Backbone.hpp"
#include "backends.hpp"
#include "HeadLoss.hpp"
#include "quantize.hpp"
#include "readTensor.hpp"
#include "SideNetwork.hpp"

namespace {

Napi::Object InitAll(Napi::Env env, Napi::Object exports) {
#ifdef __GLIBC__
  mallopt(M_MMAP_THRESHOLD, 256 * 1024);
#endif
  exports.Set("Backbone", mobillm::Backbone::Init(env));
  exports.Set("HeadLoss", mobillm::HeadLoss::Init(env));
  exports.Set("readTensor", Napi::Function::New(env, mobillm::ReadTensor));
  exports.Set("readTensorAsync", Napi::Function::New(env, mobillm::ReadTensorAsync));
  exports.Set("ensureBackends", Napi::Function::New(env, mobillm::EnsureBackends));
  exports.Set("quantizeModel", Napi::Function::New(env, mobillm::QuantizeModel));
  Napi::Object constants = Napi::Object::New(env);
  constants.Set("ropeBase", Napi::Number::New(env, mobillm::ROPE_BASE));
  constants.Set("maxHeadRank", Napi::Number::New(env, mobillm::MAX_HEAD_RANK));
  exports.Set("constants", constants);
  return exports;
}

}  // namespace

NODE_API_MODULE(mobillm, InitAll)

// The load worker (see LoadWorker.hpp).
#include "LoadWorker.hpp"

#include "Backbone.hpp"
#include "DecodeWorker.hpp"
#include "codedError.hpp"

namespace mobillm {

void LoadWorker::Execute() {
  llama_model_params mp = llama_model_default_params();
  mp.n_gpu_layers = 0;
  model_ = llama_model_load_from_file(path_.c_str(), mp);
  if (model_ == nullptr) {
    code_ = "MODEL_LOAD_FAILED";
    SetError("llama.cpp could not load the model file (unsupported or damaged GGUF).");
    return;
  }
  llama_context_params cp = llama_context_default_params();
  cp.n_ctx = nCtx_;
  cp.n_batch = nBatch_;
  cp.n_ubatch = nBatch_;  // one micro-batch per decode: rows come back in batch order
  cp.n_seq_max = nSeqMax_;
  cp.kv_unified = true;
  // Flash attention (llama.cpp's default "auto", the jobs' default) rounds Q
  // to f16 on the CPU (~1e-3 error), so its keys and values are f16 too: half
  // the memory (24 against 12 MiB for a 6 x 1024 model at 512 tokens). Without
  // it, f32 keys/values: captured activations then match a float reference to
  // ~1e-6 (an f16 cache rounds them at ~1e-3).
  cp.flash_attn_type = flashAttention_ ? LLAMA_FLASH_ATTN_TYPE_AUTO : LLAMA_FLASH_ATTN_TYPE_DISABLED;
  cp.type_k = flashAttention_ ? GGML_TYPE_F16 : GGML_TYPE_F32;
  cp.type_v = cp.type_k;
  cp.n_threads = nThreads_;
  cp.n_threads_batch = nThreads_;
  cp.cb_eval = evalCallback;
  cp.cb_eval_user_data = captureSlot_;
  cp.no_perf = true;
  ctx_ = llama_init_from_model(model_, cp);
  if (ctx_ == nullptr) {
    llama_model_free(model_);
    model_ = nullptr;
    code_ = "CONTEXT_FAILED";
    SetError("llama.cpp could not create a context (out of memory, or context too large).");
  }
}

void LoadWorker::OnOK() {
  bb_->Adopt(model_, ctx_, llama_n_ctx(ctx_), nBatch_, nSeqMax_);
  bb_->SetBusy(false);
  deferred_.Resolve(Env().Undefined());
}

}  // namespace mobillm

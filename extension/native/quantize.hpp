// quantizeModel(input, output, { fileType, threads }): llama.cpp's own
// quantizer (llama_model_quantize, what its llama-quantize tool runs) on a
// libuv worker: a GGUF rewritten with the tensor types llama.cpp picks for
// that file type (Q4_K_M: Q6_K for the head and some layers' values and
// down-projections, Q4_K for the rest; and so on).
#pragma once

#include <napi.h>

namespace mobillm {

Napi::Value QuantizeModel(const Napi::CallbackInfo& info);

}  // namespace mobillm

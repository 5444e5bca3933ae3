#include "readTensor.hpp"

#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "ggml.h"
#include "gguf.h"

#include "codedError.hpp"

namespace mobillm {

// readTensor(path, name, rowStart?, rowCount?) -> { shape: number[], type: string, data: Float32Array }
// Reads a tensor of a GGUF file and converts it to float32 with ggml's own
// type traits (so quantized tensors are dequantized exactly as llama.cpp does).
// Rows are the outermost dimension (ne[1] for a matrix).
Napi::Value ReadTensor(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string path = info[0].As<Napi::String>().Utf8Value();
  const std::string name = info[1].As<Napi::String>().Utf8Value();
  gguf_init_params gp = {true, nullptr};
  gguf_context* g = gguf_init_from_file(path.c_str(), gp);
  if (g == nullptr) {
    codedError(env, "NOT_GGUF", "The file is not a readable GGUF file.").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::unique_ptr<gguf_context, void (*)(gguf_context*)> guard(g, gguf_free);
  const int64_t id = gguf_find_tensor(g, name.c_str());
  if (id < 0) {
    codedError(env, "NO_SUCH_TENSOR", "The model has no tensor named " + name + ".").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const ggml_type type = gguf_get_tensor_type(g, id);
  const int64_t* ne = gguf_get_tensor_ne(g, id);
  const int64_t rowLen = ne[0];
  int64_t nRows = 1;
  for (int d = 1; d < GGML_MAX_DIMS; ++d) nRows *= ne[d];
  int64_t rowStart = info.Length() > 2 && info[2].IsNumber() ? info[2].As<Napi::Number>().Int64Value() : 0;
  int64_t rowCount = info.Length() > 3 && info[3].IsNumber() ? info[3].As<Napi::Number>().Int64Value() : nRows - rowStart;
  if (rowStart < 0 || rowCount < 0 || rowStart + rowCount > nRows) {
    codedError(env, "BAD_ARGUMENT", "Row range out of bounds.").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const size_t rowBytes = ggml_row_size(type, rowLen);
  const ggml_type_traits* traits = ggml_get_type_traits(type);
  if (type != GGML_TYPE_F32 && (traits == nullptr || traits->to_float == nullptr)) {
    codedError(env, "UNSUPPORTED_TYPE", "No float conversion for this tensor type.").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const size_t offset = gguf_get_data_offset(g) + gguf_get_tensor_offset(g, id) + static_cast<size_t>(rowStart) * rowBytes;
  std::vector<uint8_t> raw(static_cast<size_t>(rowCount) * rowBytes);
  FILE* f = std::fopen(path.c_str(), "rb");
  bool ok = f != nullptr && fseeko(f, static_cast<off_t>(offset), SEEK_SET) == 0 &&
            std::fread(raw.data(), 1, raw.size(), f) == raw.size();
  if (f != nullptr) std::fclose(f);
  if (!ok) {
    codedError(env, "TRUNCATED_GGUF", "The tensor data is cut short (truncated file).").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Float32Array out = Napi::Float32Array::New(env, static_cast<size_t>(rowCount * rowLen));
  if (type == GGML_TYPE_F32) {
    std::memcpy(out.Data(), raw.data(), raw.size());
  } else {
    traits->to_float(raw.data(), out.Data(), rowCount * rowLen);
  }
  Napi::Array shape = Napi::Array::New(env);
  uint32_t nd = 0;
  for (int d = 0; d < GGML_MAX_DIMS; ++d) {
    if (d == 0 || ne[d] > 1) shape.Set(nd++, Napi::Number::New(env, static_cast<double>(ne[d])));
  }
  Napi::Object res = Napi::Object::New(env);
  res.Set("shape", shape);
  res.Set("type", Napi::String::New(env, ggml_type_name(type)));
  res.Set("data", out);
  return res;
}


}  // namespace mobillm

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

namespace {

// A tensor's rows read and converted to float32, or why not (a device error code and message).
struct TensorRows {
  std::vector<int64_t> shape;
  std::string type;
  std::vector<float> data;
  const char* code = nullptr;
  std::string message;
};

// Reads rows [rowStart, rowStart + rowCount) of tensor `name` (rowCount < 0: to the end) and
// converts them to float32 with ggml's own type traits (so quantized tensors are dequantized
// exactly as llama.cpp does). Rows are the outermost dimension (ne[1] for a matrix). Touches no
// JavaScript value: it runs on the calling thread or on a worker of libuv's pool.
TensorRows readRows(const std::string& path, const std::string& name, int64_t rowStart, int64_t rowCount) {
  TensorRows r;
  gguf_init_params gp = {true, nullptr};
  gguf_context* g = gguf_init_from_file(path.c_str(), gp);
  if (g == nullptr) {
    r.code = "NOT_GGUF";
    r.message = "The file is not a readable GGUF file.";
    return r;
  }
  std::unique_ptr<gguf_context, void (*)(gguf_context*)> guard(g, gguf_free);
  const int64_t id = gguf_find_tensor(g, name.c_str());
  if (id < 0) {
    r.code = "NO_SUCH_TENSOR";
    r.message = "The model has no tensor named " + name + ".";
    return r;
  }
  const ggml_type type = gguf_get_tensor_type(g, id);
  const int64_t* ne = gguf_get_tensor_ne(g, id);
  const int64_t rowLen = ne[0];
  int64_t nRows = 1;
  for (int d = 1; d < GGML_MAX_DIMS; ++d) nRows *= ne[d];
  if (rowCount < 0) rowCount = nRows - rowStart;
  if (rowStart < 0 || rowCount < 0 || rowStart + rowCount > nRows) {
    r.code = "BAD_ARGUMENT";
    r.message = "Row range out of bounds.";
    return r;
  }
  const size_t rowBytes = ggml_row_size(type, rowLen);
  const ggml_type_traits* traits = ggml_get_type_traits(type);
  if (type != GGML_TYPE_F32 && (traits == nullptr || traits->to_float == nullptr)) {
    r.code = "UNSUPPORTED_TYPE";
    r.message = "No float conversion for this tensor type.";
    return r;
  }
  const size_t offset = gguf_get_data_offset(g) + gguf_get_tensor_offset(g, id) + static_cast<size_t>(rowStart) * rowBytes;
  std::vector<uint8_t> raw(static_cast<size_t>(rowCount) * rowBytes);
  FILE* f = std::fopen(path.c_str(), "rb");
  bool ok = f != nullptr && fseeko(f, static_cast<off_t>(offset), SEEK_SET) == 0 &&
            std::fread(raw.data(), 1, raw.size(), f) == raw.size();
  if (f != nullptr) std::fclose(f);
  if (!ok) {
    r.code = "TRUNCATED_GGUF";
    r.message = "The tensor data is cut short (truncated file).";
    return r;
  }
  r.data.resize(static_cast<size_t>(rowCount * rowLen));
  if (type == GGML_TYPE_F32) {
    std::memcpy(r.data.data(), raw.data(), raw.size());
  } else {
    traits->to_float(raw.data(), r.data.data(), rowCount * rowLen);
  }
  for (int d = 0; d < GGML_MAX_DIMS; ++d) {
    if (d == 0 || ne[d] > 1) r.shape.push_back(ne[d]);
  }
  r.type = ggml_type_name(type);
  return r;
}

// The arguments both entry points take: path, name, rowStart?, rowCount?.
void readArgs(const Napi::CallbackInfo& info, std::string& path, std::string& name, int64_t& rowStart, int64_t& rowCount) {
  path = info[0].As<Napi::String>().Utf8Value();
  name = info[1].As<Napi::String>().Utf8Value();
  rowStart = info.Length() > 2 && info[2].IsNumber() ? info[2].As<Napi::Number>().Int64Value() : 0;
  rowCount = info.Length() > 3 && info[3].IsNumber() ? info[3].As<Napi::Number>().Int64Value() : -1;
}

// { shape: number[], type: string, data: Float32Array } from rows read.
Napi::Object toJs(Napi::Env env, const TensorRows& r) {
  Napi::Float32Array out = Napi::Float32Array::New(env, r.data.size());
  if (!r.data.empty()) std::memcpy(out.Data(), r.data.data(), r.data.size() * sizeof(float));
  Napi::Array shape = Napi::Array::New(env);
  for (uint32_t i = 0; i < r.shape.size(); ++i) shape.Set(i, Napi::Number::New(env, static_cast<double>(r.shape[i])));
  Napi::Object res = Napi::Object::New(env);
  res.Set("shape", shape);
  res.Set("type", Napi::String::New(env, r.type));
  res.Set("data", out);
  return res;
}

// Reads on a worker of libuv's pool and settles a promise on the JavaScript thread.
class ReadTensorWorker : public Napi::AsyncWorker {
 public:
  ReadTensorWorker(Napi::Env env, std::string path, std::string name, int64_t rowStart, int64_t rowCount)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), path_(std::move(path)), name_(std::move(name)), rowStart_(rowStart), rowCount_(rowCount) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override { rows_ = readRows(path_, name_, rowStart_, rowCount_); }

  void OnOK() override {
    Napi::Env env = Env();
    if (rows_.code != nullptr) {
      deferred_.Reject(codedError(env, rows_.code, rows_.message).Value());
      return;
    }
    deferred_.Resolve(toJs(env, rows_));
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::string path_, name_;
  int64_t rowStart_, rowCount_;
  TensorRows rows_;
};

}  // namespace

// readTensor(path, name, rowStart?, rowCount?) -> { shape: number[], type: string, data: Float32Array }
Napi::Value ReadTensor(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path, name;
  int64_t rowStart = 0, rowCount = -1;
  readArgs(info, path, name, rowStart, rowCount);
  const TensorRows r = readRows(path, name, rowStart, rowCount);
  if (r.code != nullptr) {
    codedError(env, r.code, r.message).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return toJs(env, r);
}

// readTensorAsync(path, name, rowStart?, rowCount?) -> Promise of the same, read off the JavaScript thread.
Napi::Value ReadTensorAsync(const Napi::CallbackInfo& info) {
  std::string path, name;
  int64_t rowStart = 0, rowCount = -1;
  readArgs(info, path, name, rowStart, rowCount);
  auto* worker = new ReadTensorWorker(info.Env(), std::move(path), std::move(name), rowStart, rowCount);
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

}  // namespace mobillm

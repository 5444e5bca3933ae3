#include "readSequences.hpp"

#include "codedError.hpp"

namespace mobillm {

bool readSequences(Napi::Env env, const Napi::Array& seqs, int nVocab, uint32_t maxSeq, std::vector<std::vector<llama_token>>& out, size_t& total) {
  total = 0;
  if (seqs.Length() == 0 || seqs.Length() > maxSeq) {
    codedError(env, "BAD_ARGUMENT", "Sequence count out of range.").ThrowAsJavaScriptException();
    return false;
  }
  for (uint32_t s = 0; s < seqs.Length(); ++s) {
    const Napi::Value v = seqs.Get(s);
    if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array) {
      codedError(env, "BAD_ARGUMENT", "Each sequence must be an Int32Array of token ids.").ThrowAsJavaScriptException();
      return false;
    }
    Napi::Int32Array a = v.As<Napi::Int32Array>();
    if (a.ElementLength() == 0) {
      codedError(env, "EMPTY_INPUT", "A sequence has no tokens.").ThrowAsJavaScriptException();
      return false;
    }
    std::vector<llama_token> seq(a.Data(), a.Data() + a.ElementLength());
    for (llama_token t : seq) {
      if (t < 0 || t >= nVocab) {
        codedError(env, "BAD_TOKEN", "A token id is outside the vocabulary.").ThrowAsJavaScriptException();
        return false;
      }
    }
    total += seq.size();
    out.push_back(std::move(seq));
  }
  return true;
}


}  // namespace mobillm

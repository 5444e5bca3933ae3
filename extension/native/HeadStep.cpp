// The device's head update (see HeadLoss.hpp): its sparse gradient terms, its
// clipped Adam step, and the JavaScript methods that set and export it.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "HeadLoss.hpp"
#include "codedError.hpp"

namespace mobillm {

void HeadLoss::SparseHeadUpdate(const HeadWeights& hw, HeadUpdateState& hu, const std::vector<int64_t>& tokens, const std::vector<std::vector<std::pair<int32_t, float>>>& candidates,
                                const std::vector<double>& R, const std::vector<double>& tail, const std::vector<float>& u, const float* weights,
                                float* accB) {
  const int64_t k = hu.rank, V = hw.vocab;
  if (tokens.empty()) return;
  // A sparse token's left-out probability goes to B's mean row, as W's goes to W's (HeadCompute.cpp).
  std::vector<double> meanB(static_cast<size_t>(k), 0.0), spread(static_cast<size_t>(k), 0.0);
  for (int64_t v = 0; v < V; ++v) for (int64_t c = 0; c < k; ++c) meanB[c] += hu.b[v * k + c];
  for (auto& x : meanB) x /= static_cast<double>(V);
  for (const int64_t j : tokens) {
    const float w = weights[j];
    const float* uj = u.data() + j * k;
    float* accBj = accB + j * k;
    for (const auto& e : candidates[static_cast<size_t>(j)]) {
      const float pv = static_cast<float>(std::exp(static_cast<double>(e.second) - R[j]));
      const float* Bv = hu.b.data() + static_cast<int64_t>(e.first) * k;
      float* gv = hu.gb.data() + static_cast<int64_t>(e.first) * k;
      for (int64_t c = 0; c < k; ++c) {
        accBj[c] += pv * Bv[c];
        gv[c] += w * pv * uj[c];
      }
    }
    for (int64_t c = 0; c < k; ++c) {
      accBj[c] += static_cast<float>(tail[j] * meanB[c]);
      spread[c] += w * tail[j] * uj[c] / static_cast<double>(V);
    }
  }
  bool any = false;
  for (const double x : spread) any = any || x != 0;
  if (!any) return;
  for (int64_t v = 0; v < V; ++v) for (int64_t c = 0; c < k; ++c) hu.gb[v * k + c] += static_cast<float>(spread[c]);
}

void HeadLoss::HeadUpdateTerms(const HeadWeights& hw, HeadUpdateState& hu, const float* zj, const float* uj, const float* accBj, int32_t target, float w, float* du, float* lift) {
  const int64_t k = hu.rank, d = hw.d;
  const float* Bt = hu.b.data() + static_cast<int64_t>(target) * k;
  for (int64_t c = 0; c < k; ++c) du[c] = w * (accBj[c] - Bt[c]);
  for (int64_t i = 0; i < d; ++i) {
    const float* ai = hu.a.data() + i * k;
    float* gai = hu.ga.data() + i * k;
    float sum = 0;
    for (int64_t c = 0; c < k; ++c) {
      sum += ai[c] * du[c];
      gai[c] += zj[i] * du[c];
    }
    lift[i] = sum;
  }
  float* gt = hu.gb.data() + static_cast<int64_t>(target) * k;
  for (int64_t c = 0; c < k; ++c) gt[c] -= w * uj[c];
}

namespace {

template <typename Vec>
void adam(Vec& p, std::vector<float>& m, std::vector<float>& v, const std::vector<float>& g, double scale, const HeadStepOptions& o,
          double c1, double c2) {
  for (size_t i = 0; i < g.size(); ++i) {
    const double gi = g[i] * scale;
    m[i] = static_cast<float>(o.beta1 * m[i] + (1 - o.beta1) * gi);
    v[i] = static_cast<float>(o.beta2 * v[i] + (1 - o.beta2) * gi * gi);
    p[i] = static_cast<float>(p[i] - (o.learningRate * (m[i] / c1)) / (std::sqrt(v[i] / c2) + o.epsilon));
  }
}

}  // namespace

bool HeadLoss::StepHeadUpdate(const HeadStepOptions& o, double* gradNorm) {
  HeadUpdateState& hu = update_;
  double sq = 0;
  for (const float x : hu.ga) sq += static_cast<double>(x) * x;
  for (const float x : hu.gb) sq += static_cast<double>(x) * x;
  *gradNorm = std::sqrt(sq);
  if (!std::isfinite(sq)) return false;
  // Clipped as one group at the side network's clip norm, then Adam with its constants (the server's HeadUpdate.adam).
  const double scale = std::min(1.0, o.clipNorm / (*gradNorm + 1e-12));
  const double c1 = 1 - std::pow(o.beta1, o.t), c2 = 1 - std::pow(o.beta2, o.t);
  adam(hu.a, hu.ma, hu.va, hu.ga, scale, o, c1, c2);
  adam(hu.b, hu.mb, hu.vb, hu.gb, scale, o, c1, c2);
  return true;
}

namespace {

template <typename Vec>
bool copyInto(const Napi::Value& v, size_t n, Vec* out) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array) return false;
  Napi::Float32Array a = v.As<Napi::Float32Array>();
  if (a.ElementLength() != n) return false;
  out->assign(a.Data(), a.Data() + n);
  return true;
}

template <typename Vec>
Napi::Float32Array toJs(Napi::Env env, const Vec& v) {
  Napi::Float32Array a = Napi::Float32Array::New(env, v.size());
  if (!v.empty()) std::memcpy(a.Data(), v.data(), v.size() * sizeof(float));
  return a;
}

}  // namespace

namespace {

class HeadStepWorker : public Napi::AsyncWorker {
 public:
  HeadStepWorker(Napi::Env env, HeadLoss* head, Napi::Object self, const HeadStepOptions& o)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), head_(head), o_(o) {
    self_ = Napi::Persistent(self);
  }
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override { stepped_ = head_->StepHeadUpdate(o_, &gradNorm_); }
  void OnOK() override {
    Napi::Env env = Env();
    head_->SetBusy(false);
    Napi::Object res = Napi::Object::New(env);
    res.Set("stepped", Napi::Boolean::New(env, stepped_));
    res.Set("gradNorm", Napi::Number::New(env, gradNorm_));
    deferred_.Resolve(res);
  }
  void OnError(const Napi::Error& e) override {
    head_->SetBusy(false);
    deferred_.Reject(e.Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  HeadLoss* head_;
  Napi::ObjectReference self_;
  HeadStepOptions o_;
  bool stepped_ = false;
  double gradNorm_ = 0;
};

}  // namespace

Napi::Value HeadLoss::StepHeadUpdateJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (busy_ || !weights_ || disposed_) {
    codedError(env, busy_ ? "BUSY" : disposed_ ? "DISPOSED" : "NOT_LOADED", busy_ ? "The head is busy." : "Load the head first.").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (update_.rank == 0 || update_.ga.empty() || !info[0].IsObject()) {
    codedError(env, "BAD_ARGUMENT", "stepHeadUpdate({ learningRate, t, clipNorm, beta1, beta2, epsilon }) follows a gradient of a head update.").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  HeadStepOptions o;
  Napi::Object js = info[0].As<Napi::Object>();
  const char* names[] = {"learningRate", "t", "clipNorm", "beta1", "beta2", "epsilon"};
  double* fields[] = {&o.learningRate, &o.t, &o.clipNorm, &o.beta1, &o.beta2, &o.epsilon};
  for (size_t i = 0; i < 6; ++i) {
    if (!js.Get(names[i]).IsNumber()) {
      codedError(env, "BAD_ARGUMENT", std::string("The head update's step needs ") + names[i] + ".").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    *fields[i] = js.Get(names[i]).As<Napi::Number>().DoubleValue();
  }
  busy_ = true;
  auto* w = new HeadStepWorker(env, this, info.This().As<Napi::Object>(), o);
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

Napi::Value HeadLoss::SetHeadUpdate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (busy_ || !weights_) {
    codedError(env, busy_ ? "BUSY" : "NOT_LOADED", busy_ ? "The head is busy." : "Load the head first.").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const int64_t rank = info[0].IsNumber() ? info[0].As<Napi::Number>().Int64Value() : -1;
  if (rank < 0 || rank > 256) {
    codedError(env, "BAD_ARGUMENT", "setHeadUpdate(rank, a, b, moments?): rank 0..256").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  HeadUpdateState next;
  next.rank = rank;
  if (rank > 0) {
    const size_t na = static_cast<size_t>(weights_->d * rank), nb = static_cast<size_t>(weights_->vocab * rank);
    bool ok = copyInto(info[1], na, &next.a);
    if (info[2].IsUndefined()) next.b.assign(nb, 0.0f);  // a new job's B: zero, without a copy from JavaScript
    else ok = ok && copyInto(info[2], nb, &next.b);
    if (ok && info.Length() > 3 && info[3].IsObject()) {
      Napi::Object m = info[3].As<Napi::Object>();
      ok = copyInto(m.Get("ma"), na, &next.ma) && copyInto(m.Get("va"), na, &next.va) && copyInto(m.Get("mb"), nb, &next.mb) &&
           copyInto(m.Get("vb"), nb, &next.vb);
    } else if (ok) {
      next.ma.assign(na, 0.0f);
      next.va.assign(na, 0.0f);
      next.mb.assign(nb, 0.0f);
      next.vb.assign(nb, 0.0f);
    }
    if (!ok) {
      codedError(env, "BAD_ARGUMENT", "The head update's arrays must be Float32Array [hiddenSize][rank] and [vocabularySize][rank].").ThrowAsJavaScriptException();
      return env.Undefined();
    }
  }
  update_ = std::move(next);
  return env.Undefined();
}

Napi::Value HeadLoss::ExportHeadUpdate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (busy_) {
    codedError(env, "BUSY", "The head is busy.").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("rank", Napi::Number::New(env, static_cast<double>(update_.rank)));
  out.Set("a", toJs(env, update_.a));
  out.Set("b", toJs(env, update_.b));
  if (info.Length() > 0 && info[0].ToBoolean().Value()) {
    out.Set("ma", toJs(env, update_.ma));
    out.Set("va", toJs(env, update_.va));
    out.Set("mb", toJs(env, update_.mb));
    out.Set("vb", toJs(env, update_.vb));
  }
  return out;
}

}  // namespace mobillm


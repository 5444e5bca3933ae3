// The head update's snapshots (see HeadLoss.hpp), written and read on libuv's
// workers, so no copy of A, B or their moments is made on the JavaScript thread.
#include <cstdio>
#include <cstring>
#include <string>

#include "HeadLoss.hpp"
#include "codedError.hpp"

#ifndef _WIN32
#include <unistd.h>
#endif


// File: the 8 magic bytes MOBIHEAD | u32 version | u32 reserved | i64 rank, d, vocab, step | 36-byte job id | a, b, ma, va, mb, vb
// (float32) | u64 FNV-1a of everything before it. Written to `path` as given (the caller renames it into place).

namespace mobillm {

constexpr size_t JOB_ID_BYTES = 36;

struct SnapshotHeader {
  char magic[8];
  uint32_t version;
  uint32_t reserved;
  int64_t rank, d, vocab, step;
  char jobId[JOB_ID_BYTES];
};

namespace {

constexpr char SNAPSHOT_MAGIC[8] = {'M', 'O', 'B', 'I', 'H', 'E', 'A', 'D'};
constexpr uint32_t SNAPSHOT_VERSION = 1;

struct Fnv {
  uint64_t h = 1469598103934665603ULL;
  void add(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ULL;
  }
};

std::string jobIdOf(const Napi::Value& v) {
  std::string s = v.IsString() ? v.As<Napi::String>().Utf8Value() : std::string();
  s.resize(JOB_ID_BYTES, '\0');
  return s;
}

class SnapshotWorker : public Napi::AsyncWorker {
 public:
  SnapshotWorker(Napi::Env env, HeadLoss* head, Napi::Object self, bool save, std::string path, SnapshotHeader header)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), head_(head), save_(save), path_(std::move(path)), header_(header) {
    self_ = Napi::Persistent(self);
  }
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override {
    std::string error;
    if (!(save_ ? head_->SaveSnapshot(path_, header_, &error) : head_->LoadSnapshot(path_, header_, &error))) SetError(error);
  }
  void OnOK() override {
    head_->SetBusy(false);
    deferred_.Resolve(Env().Undefined());
  }
  void OnError(const Napi::Error& e) override {
    head_->SetBusy(false);
    deferred_.Reject(codedError(Env(), save_ ? "IO_ERROR" : "BAD_ARGUMENT", e.Message()).Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  HeadLoss* head_;
  Napi::ObjectReference self_;
  bool save_;
  std::string path_;
  SnapshotHeader header_;
};

}  // namespace

bool HeadLoss::SaveSnapshot(const std::string& path, const SnapshotHeader& header, std::string* error) {
  const HeadUpdateState& hu = update_;
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) {
    *error = "Could not write the head update's snapshot.";
    return false;
  }
  Fnv sum;
  bool ok = true;
  auto put = [&](const void* p, size_t n) {
    if (!ok || n == 0) return;
    sum.add(p, n);
    ok = std::fwrite(p, 1, n, f) == n;
  };
  put(&header, sizeof header);
  put(hu.a.data(), hu.a.size() * sizeof(float));
  put(hu.b.data(), hu.b.size() * sizeof(float));
  for (const auto* v : {&hu.ma, &hu.va, &hu.mb, &hu.vb}) put(v->data(), v->size() * sizeof(float));
  const uint64_t h = sum.h;
  ok = ok && std::fwrite(&h, 1, sizeof h, f) == sizeof h && std::fflush(f) == 0;
#ifndef _WIN32
  ok = ok && fsync(fileno(f)) == 0;
#endif
  ok = std::fclose(f) == 0 && ok;
  if (!ok) *error = "Could not write the head update's snapshot (disk full?).";
  return ok;
}

bool HeadLoss::LoadSnapshot(const std::string& path, const SnapshotHeader& expect, std::string* error) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    *error = "The head update's snapshot cannot be read.";
    return false;
  }
  HeadUpdateState next;
  next.rank = expect.rank;
  const size_t na = static_cast<size_t>(expect.d * expect.rank), nb = static_cast<size_t>(expect.vocab * expect.rank);
  SnapshotHeader h{};
  Fnv sum;
  bool ok = std::fread(&h, 1, sizeof h, f) == sizeof h;
  sum.add(&h, sizeof h);
  ok = ok && std::memcmp(h.magic, SNAPSHOT_MAGIC, 8) == 0 && h.version == SNAPSHOT_VERSION && h.rank == expect.rank && h.d == expect.d &&
       h.vocab == expect.vocab && h.step == expect.step && std::memcmp(h.jobId, expect.jobId, JOB_ID_BYTES) == 0;
  auto get = [&](auto& v, size_t n) {
    v.resize(n);
    if (!ok) return;
    ok = std::fread(v.data(), sizeof(float), n, f) == n;
    sum.add(v.data(), n * sizeof(float));
  };
  get(next.a, na);
  get(next.b, nb);
  get(next.ma, na);
  get(next.va, na);
  get(next.mb, nb);
  get(next.vb, nb);
  uint64_t stored = 0;
  ok = ok && std::fread(&stored, 1, sizeof stored, f) == sizeof stored && stored == sum.h && std::fgetc(f) == EOF;
  std::fclose(f);
  if (!ok) {
    *error = "The head update's snapshot is damaged or belongs to another job, step or shape.";
    return false;
  }
  update_ = std::move(next);
  return true;
}

Napi::Value HeadLoss::SnapshotJs(const Napi::CallbackInfo& info, bool save) {
  Napi::Env env = info.Env();
  if (busy_ || !weights_ || disposed_) {
    codedError(env, busy_ ? "BUSY" : disposed_ ? "DISPOSED" : "NOT_LOADED", busy_ ? "The head is busy." : "Load the head first.").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (!info[0].IsString() || !info[1].IsString() || !info[2].IsNumber() || !info[3].IsNumber() || (save && update_.rank == 0)) {
    codedError(env, "BAD_ARGUMENT", "saveHeadUpdate / loadHeadUpdate(path, jobId, step, rank), with a head update to save").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  SnapshotHeader h{};
  std::memcpy(h.magic, SNAPSHOT_MAGIC, 8);
  h.version = SNAPSHOT_VERSION;
  h.rank = save ? update_.rank : info[3].As<Napi::Number>().Int64Value();
  h.d = weights_->d;
  h.vocab = weights_->vocab;
  h.step = info[2].As<Napi::Number>().Int64Value();
  const std::string id = jobIdOf(info[1]);
  std::memcpy(h.jobId, id.data(), JOB_ID_BYTES);
  if (h.rank <= 0 || h.rank > 256) {
    codedError(env, "BAD_ARGUMENT", "The head update's rank is 1..256.").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  busy_ = true;
  auto* w = new SnapshotWorker(env, this, info.This().As<Napi::Object>(), save, info[0].As<Napi::String>().Utf8Value(), h);
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

}  // namespace mobillm

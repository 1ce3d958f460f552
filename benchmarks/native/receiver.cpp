// A receive path without Python per frame: a pvxs monitor whose callback, on pvxs's own
// thread and without the GIL, decodes each NTNDArray into a whole-batch float32 buffer,
// with its uniqueId, time, x/y/point attributes and time of receipt; Python takes whole
// batches (a partial one once its first frame has waited the batch timeout), as the
// worker's BatchQueue hands them out.  The prototype that benchmarks/native_pipeline.py
// measures; it builds this file and loads it through ctypes.
#include <pvxs/client.h>
#include <pvxs/data.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <string>

using namespace pvxs;
using Clock = std::chrono::steady_clock;  // CLOCK_MONOTONIC, as Python's perf_counter

namespace {

constexpr int TAGS = 6;  // uniqueId, frame time, x, y, point, receipt

template <typename T>
void to_float(const void* src, float* dst, size_t n) {
    const T* s = static_cast<const T*>(src);
    for (size_t i = 0; i < n; i++) dst[i] = static_cast<float>(s[i]);
}

bool convert(const shared_array<const void>& data, float* dst, size_t n) {
    switch (data.original_type()) {
        case ArrayType::Int8: to_float<int8_t>(data.data(), dst, n); return true;
        case ArrayType::UInt8: to_float<uint8_t>(data.data(), dst, n); return true;
        case ArrayType::Int16: to_float<int16_t>(data.data(), dst, n); return true;
        case ArrayType::UInt16: to_float<uint16_t>(data.data(), dst, n); return true;
        case ArrayType::Int32: to_float<int32_t>(data.data(), dst, n); return true;
        case ArrayType::UInt32: to_float<uint32_t>(data.data(), dst, n); return true;
        case ArrayType::Float32: std::memcpy(dst, data.data(), n * sizeof(float)); return true;
        case ArrayType::Float64: to_float<double>(data.data(), dst, n); return true;
        default: return false;
    }
}

double attribute(const shared_array<const Value>& attributes, const char* name) {
    for (const auto& a : attributes) {
        if (a["name"].as<std::string>() == name) return a["value->"].as<double>();
    }
    return 0.0;
}

double seconds(Clock::time_point t) {
    return std::chrono::duration<double>(t.time_since_epoch()).count();
}

}  // namespace

struct Receiver {
    int n_buffers, batch, pixels;
    double timeout;    // seconds the first frame of a partial batch waits
    float* frames;     // [n_buffers, batch, pixels], owned by Python
    double* tags;      // [n_buffers, batch, TAGS], owned by Python
    std::mutex lock;
    std::condition_variable ready;
    std::deque<int> free_, full;
    int open = -1, count = 0;
    Clock::time_point opened_at;
    long long received = 0, dropped = 0, rejected = 0, missed = 0, last_id = 0;
    client::Context ctx;
    std::shared_ptr<client::Subscription> sub;

    // One frame into the open buffer's next slot, under the lock (a take must not hand
    // out a slot half written); counted as received, and as dropped or rejected.
    void on_update(const Value& v) {
        auto now = Clock::now();
        long long id = v["uniqueId"].as<int32_t>();
        if (id == 0) return;  // the empty value a server starts with
        std::lock_guard<std::mutex> guard(lock);
        received++;
        if (last_id && id > last_id + 1) missed += id - last_id - 1;
        last_id = id;
        if (open < 0) {
            if (free_.empty()) { dropped++; return; }
            open = free_.front();
            free_.pop_front();
        }
        size_t slot = size_t(open) * batch + count;
        auto data = v["value->"].as<shared_array<const void>>();
        if (data.size() != size_t(pixels) || !convert(data, frames + slot * pixels, pixels)) {
            rejected++;
            return;
        }
        double* t = tags + slot * TAGS;
        t[0] = double(id);
        t[1] = v["dataTimeStamp.secondsPastEpoch"].as<double>() +
               1e-9 * v["dataTimeStamp.nanoseconds"].as<double>();
        auto attributes = v["attribute"].as<shared_array<const Value>>();
        t[2] = attribute(attributes, "x");
        t[3] = attribute(attributes, "y");
        t[4] = attribute(attributes, "point");
        t[5] = seconds(now);
        if (count++ == 0) {
            opened_at = now;
            ready.notify_one();
        }
        if (count == batch) {
            full.push_back(open);
            open = -1;
            count = 0;
            ready.notify_one();
        }
    }
};

extern "C" {

Receiver* rx_open(const char* channel, int n_buffers, int batch, int pixels, double timeout,
                  float* frames, double* tags, int queue_size) {
    auto* rx = new Receiver{n_buffers, batch, pixels, timeout, frames, tags};
    for (int b = 0; b < n_buffers; b++) rx->free_.push_back(b);
    rx->ctx = client::Context::fromEnv();
    rx->sub = rx->ctx.monitor(channel)
                  // as text, as pvAccess's own clients send it: pvDatabase's servers
                  // ignore a queueSize sent as a number and squash at their default
                  .record("queueSize", std::to_string(queue_size))
                  .maskConnected(true)
                  .maskDisconnected(true)
                  .event([rx](client::Subscription& sub) {
                      while (auto v = sub.pop()) rx->on_update(v);
                  })
                  .exec();
    return rx;
}

// The next batch: its buffer, with its frame count in *n; -1 if none within idle_s.
int rx_take(Receiver* rx, double idle_s, int* n) {
    std::unique_lock<std::mutex> guard(rx->lock);
    auto until = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                    std::chrono::duration<double>(idle_s));
    while (true) {
        if (!rx->full.empty()) {
            int b = rx->full.front();
            rx->full.pop_front();
            *n = rx->batch;
            return b;
        }
        auto now = Clock::now();
        if (rx->count) {
            auto due = rx->opened_at + std::chrono::duration_cast<Clock::duration>(
                                           std::chrono::duration<double>(rx->timeout));
            if (now >= due) {
                int b = rx->open;
                *n = rx->count;
                rx->open = -1;
                rx->count = 0;
                return b;
            }
            rx->ready.wait_until(guard, due);
        } else if (now >= until) {
            return -1;
        } else {
            rx->ready.wait_until(guard, until);
        }
    }
}

void rx_release(Receiver* rx, int buffer) {
    std::lock_guard<std::mutex> guard(rx->lock);
    rx->free_.push_back(buffer);
}

// received, dropped (no free buffer), rejected, missed (uniqueId gaps), and pvxs's own
// counts of updates the server squashed and the client squashed, and its deepest queue.
void rx_counts(Receiver* rx, long long* out) {
    client::SubscriptionStat stat;
    rx->sub->stats(stat);
    std::lock_guard<std::mutex> guard(rx->lock);
    long long counts[] = {rx->received, rx->dropped, rx->rejected, rx->missed,
                          (long long)stat.nSrvSquash, (long long)stat.nCliSquash,
                          (long long)stat.maxQueue};
    std::memcpy(out, counts, sizeof counts);
}

void rx_close(Receiver* rx) {
    rx->sub->cancel();
    rx->sub.reset();
    rx->ctx.close();
    delete rx;
}
}

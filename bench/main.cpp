// bench/main.cpp: normspec_bench. Registers <op>/<norm>/<layout>/<shape>/<impl>/t<threads> for
// every case, op, impl and thread count; before timing, each impl's output is checked against
// normspec's, and a mismatch fails the run. With --normspec_rounds=R each (case, op, threads)
// registers its impls R times over, each round in its own random order, so that a case's impls
// are all timed within seconds of each other.
#include "bench.hpp"

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace bench {

std::map<std::string, factory>& registry() {
    static std::map<std::string, factory> r;
    return r;
}

void set_threads(int threads) {
#ifdef _OPENMP
    omp_set_num_threads(threads);
#endif
}

namespace {

std::vector<bench_case> cases() {
    std::vector<bench_case> v;
    for (auto norm : {"layer_norm", "rms_norm"})
        for (auto s : std::vector<std::vector<std::int64_t>>{{8, 4096}, {31, 301}, {512, 768}, {2048, 1024}, {4096, 4096}})
            v.push_back({norm, "TD", s});
    for (auto layout : {"NCHW", "NHWC"}) {
        for (auto s : std::vector<std::vector<std::int64_t>>{{32, 64, 56, 56}, {8, 256, 32, 32}, {1, 320, 64, 64}, {50, 2048, 7, 7}})
            v.push_back({"batch_norm", layout, s});
        for (auto s : std::vector<std::vector<std::int64_t>>{{32, 64, 56, 56}, {1, 320, 64, 64}})
            v.push_back({"instance_norm", layout, s});
        for (auto s : std::vector<std::vector<std::int64_t>>{{2, 320, 96, 96}, {1, 320, 64, 64}, {8, 256, 32, 32}})
            v.push_back({"group_norm", layout, s, 32});
    }
    v.push_back({"layer_norm_cnn", "NCHW", {32, 64, 56, 56}});
    return v;
}

inputs make_inputs(const bench_case& c) {
    inputs in;
    std::mt19937 gen(7);
    std::normal_distribution<float> d(0.5f, 2.0f);
    in.x.resize(static_cast<std::size_t>(c.size()));
    for (auto& v : in.x) v = d(gen);
    in.dy.resize(in.x.size());
    std::normal_distribution<float> dd(0.0f, 1.0f);
    for (auto& v : in.dy) v = dd(gen);
    in.param_size = c.norm == "layer_norm_cnn" ? c.size() / c.N() : c.norm == "layer_norm" || c.norm == "rms_norm" ? c.shape[1] : c.C();
    in.stat_size = c.norm == "batch_norm" ? c.C() : 1;
    for (std::int64_t i = 0; i < in.param_size; ++i) in.gamma.push_back(1.0f + 0.001f * float(i % 97)), in.beta.push_back(0.01f * float(i % 13));
    for (std::int64_t i = 0; i < in.stat_size; ++i) in.running_mean.push_back(0.4f), in.running_var.push_back(3.5f + 0.01f * float(i % 7));
    return in;
}

bool failed = false;

/// max |a - b| over max |b|
double rel_diff(const float* a, const float* b, std::int64_t n) {
    double err = 0, scale = 1;
    for (std::int64_t i = 0; i < n; ++i) {
        err = std::max(err, double(std::abs(a[i] - b[i])));
        scale = std::max(scale, double(std::abs(b[i])));
    }
    return err / scale;
}

}  // namespace
}  // namespace bench

int main(int argc, char** argv) {
    using namespace bench;
    // --normspec_min_time=S: seconds per benchmark (default 0.05); the CI smoke run uses a tiny value
    double min_time = 0.05;
    // --normspec_rounds=R: per (case, op, threads), R rounds of all its impls back to back, each
    // round in its own random order (default 1); report.py takes each impl's median over them
    int rounds = 1;
    // --normspec_offset=B: every output starts B bytes past a 4 KiB boundary (default 0; the
    // inputs start on one), to time a placement modulo 4 KiB other than the default
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i], time_flag = "--normspec_min_time=", offset_flag = "--normspec_offset=",
                          rounds_flag = "--normspec_rounds=";
        if (a.rfind(time_flag, 0) == 0) {
            min_time = std::stod(a.substr(time_flag.size()));
        } else if (a.rfind(rounds_flag, 0) == 0) {
            rounds = std::atoi(a.c_str() + rounds_flag.size());
            if (rounds < 1 || rounds > 100) {
                std::fprintf(stderr, "normspec_bench: --normspec_rounds must be in [1, 100], not %s\n", a.c_str() + rounds_flag.size());
                return 2;
            }
        } else if (a.rfind(offset_flag, 0) == 0) {
            const long b = std::stol(a.substr(offset_flag.size()));
            if (b < 0 || b >= 4096 || b % 4 != 0) {
                std::fprintf(stderr, "normspec_bench: --normspec_offset must be a multiple of 4 in [0, 4096), not %ld\n", b);
                return 2;
            }
            output_offset = std::size_t(b);
        } else {
            continue;
        }
        for (int j = i; j + 1 < argc; ++j) argv[j] = argv[j + 1];
        --argc, --i;
    }
    benchmark::Initialize(&argc, argv);
    benchmark::AddCustomContext("normspec_output_offset", std::to_string(output_offset));
    benchmark::AddCustomContext("normspec_rounds", std::to_string(rounds));
    static std::map<std::string, inputs> all_inputs;  // per case, made on first use
    static std::map<std::string, std::vector<float>> expected;  // normspec's y per case/op/threads
    std::vector<std::string> impls;
    for (const auto& entry : registry()) impls.push_back(entry.first);
    std::mt19937 order(20261127);  // fixed: the same orders every run
    for (const auto& c : cases()) {
        for (op o : {op::fwd_train, op::fwd_eval, op::bwd}) {
            for (int threads : {1, 2}) {
                for (int round = 0; round < rounds; ++round) {
                    if (rounds > 1) std::shuffle(impls.begin(), impls.end(), order);
                    for (const std::string& impl : impls) {
                        const std::string key = c.norm + "/" + c.layout + "/" + c.shape_name();
                        const std::string name = std::string(op_name(o)) + "/" + key + "/" + impl + "/t" + std::to_string(threads);
                        benchmark::RegisterBenchmark(name.c_str(), [c, o, threads, impl = impl, key](benchmark::State& st) {
                            auto it = all_inputs.find(key);
                            if (it == all_inputs.end()) it = all_inputs.emplace(key, make_inputs(c)).first;
                            const inputs& in = it->second;
                            set_threads(threads);
                            std::unique_ptr<runner> r;
                            try {
                                r = registry()[impl](c, o, threads, in);
                                if (r) r->run();
                            } catch (const std::exception& e) {
                                std::fprintf(stderr, "normspec_bench: %s/%s threw: %.300s\n", key.c_str(), impl.c_str(), e.what());
                                failed = true;
                                st.SkipWithError("the implementation threw");
                                return;
                            }
                            if (!r) {
                                st.SkipWithError("no such kernel in this implementation");
                                return;
                            }
                            const bool copy = impl == "copy_nt" || impl == "memcpy";
                            double d = 0;  // the copies compute no norm: nothing to check
                            const std::string ekey = key + "/" + op_name(o) + "/" + std::to_string(threads);
                            if (!copy && !expected.count(ekey)) {
                                auto ref = registry()["normspec"](c, o, threads, in);
                                ref->run();
                                expected[ekey].assign(ref->y(), ref->y() + c.size());
                            }
                            if (!copy) d = rel_diff(r->y(), expected[ekey].data(), c.size());
                            if (!(d < 1e-4)) {
                                std::fprintf(stderr, "normspec_bench: %s/%s disagrees with normspec: max diff %.3g of the largest |y|\n",
                                             key.c_str(), impl.c_str(), d);
                                failed = true;
                                st.SkipWithError("output differs from normspec's");
                                return;
                            }
                            for (auto _ : st) {
                                r->run();
                                benchmark::ClobberMemory();
                            }
                            st.SetBytesProcessed(std::int64_t(st.iterations()) * std::int64_t(copy ? 8.0 * double(c.size()) : c.model_bytes(o)));
                            st.counters["model_bytes"] = c.model_bytes(o);
                            st.counters["out_of_cache"] = c.out_of_cache();
                            st.counters["max_rel_diff"] = d;
                        })->UseRealTime()->MinTime(min_time);
                    }
                }
            }
        }
    }
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return failed ? 1 : 0;
}

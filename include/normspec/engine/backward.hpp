// normspec/engine/backward.hpp
// The backward pass for any spec on any layout, from the same plan as the forward pass. Per
// statistic s over its N values, with gy = dy * gamma and xhat = (x - mean) * rstd (x * rstd for
// rms):
//   batch statistics:     dx = rstd * (gy - mean_s(gy) - xhat * mean_s(gy * xhat))   (rms: no mean_s(gy))
//   running statistics:   dx = rstd * gy                           (evaluation: they are constants)
//   dgamma[p] = sum of dy * xhat,  dbeta[p] = sum of dy,  over the elements with parameter index p.
// Per kept index: one sweep takes the two reductions and, in the same pass, dgamma and dbeta into
// per-thread buffers (merged once at the end); a second sweep writes dx. With batch statistics a
// first, cheap sweep recovers the exact mean from x and the saved (rounded) one. GroupNorm's gradients are
// per channel while its statistics are per group: the parameter index comes from the plan's
// parameter strides, the statistic index from its statistic strides.
#ifndef NORMSPEC_ENGINE_BACKWARD_HPP
#define NORMSPEC_ENGINE_BACKWARD_HPP

#include "forward.hpp"

namespace normspec::engine {

template <class T>
struct backward_args {
    strided<const T> x, dy;
    strided<T> dx;
    const T* gamma = nullptr;  // packed, canonical parameter order; nullptr: none (or 1)
    const T* mean = nullptr;   // saved statistics, packed in statistic layout (mean: nullptr for rms)
    const T* rstd = nullptr;
    T* dgamma = nullptr;  // packed, canonical parameter order; nullptr: not wanted
    T* dbeta = nullptr;
    bool constant_stats = false;  // evaluation with running statistics
    int threads = 0;
};

template <class T>
void backward(const spec_desc& spec, const binding& b, const backward_args<T>& a) {
    const index_t total = a.x.size();
    if (total == 0) {
        for (index_t i = 0; a.dgamma && i < b.param_count; ++i) a.dgamma[i] = T(0);
        for (index_t i = 0; a.dbeta && i < b.param_count; ++i) a.dbeta[i] = T(0);
        return;
    }
    const bool has_params = spec.kind != param_kind::none;
    const plan p = make_plan(b, a.x, a.dx, has_params, a.dy.strides.data());
    const loop_dim inner = p.fused.back();
    std::vector<loop_dim> K, R;
    for (std::size_t i = 0; i + 1 < p.fused.size(); ++i) (p.fused[i].reduced ? R : K).push_back(p.fused[i]);
    const index_t nk = count_of(K), nr = count_of(R), n = inner.extent;
    const index_t lanes = inner.reduced ? 1 : n;  // statistics per kept index
    const index_t ss = inner.reduced ? 0 : inner.sstat;
    const double inv_n = 1.0 / double(b.reduction_count);
    // threads over kept indices; with fewer kept indices than threads, one thread does it all
    int nt = threads_for(total, a.threads);
    if (nk < nt) nt = 1;
    const bool want_params = has_params && (a.dgamma || a.dbeta);
    const std::size_t pc = want_params ? std::size_t(b.param_count) : 0;
    std::vector<double> dg_parts(std::size_t(nt) * pc, 0.0), db_parts(std::size_t(nt) * pc, 0.0);
    const T* X = a.x.data;
    const T* DY = a.dy.data;
    T* DX = a.dx.data;

#pragma omp parallel num_threads(nt)
    {
        const int t = thread_id(), team = team_size();
        double* dg = pc ? &dg_parts[std::size_t(t) * pc] : nullptr;
        double* db = pc ? &db_parts[std::size_t(t) * pc] : nullptr;
        std::vector<double> sum_gy(lanes), sum_gy_xhat(lanes), mean(lanes);
        const auto [kb, ke] = split(nk, t, team);
        for_range(K, kb, ke, [&](const offsets& kk) {
            // the mean each lane normalized with: the saved one, plus (with batch statistics) what
            // rounding it to T lost, recovered exactly from x (float data at 1e4 + N(0,1) would
            // otherwise lose 1e-4 of dgamma)
            for (index_t j = 0; j < lanes; ++j) mean[j] = a.mean ? double(a.mean[kk.stat + j * ss]) : 0.0;
            if (a.mean && !a.constant_stats) {
                std::vector<double> residue(lanes, 0.0);
                for_range(R, 0, nr, [&](const offsets& r) {
                    const T* x = X + kk.x + r.x;
                    for (index_t i = 0; i < n; ++i) residue[inner.reduced ? 0 : i] += double(x[i * inner.sx]) - mean[inner.reduced ? 0 : i];
                });
                for (index_t j = 0; j < lanes; ++j) mean[j] += residue[j] * inv_n;
            }
            // sweep 1: the two reductions per statistic, dgamma and dbeta per parameter
            std::fill(sum_gy.begin(), sum_gy.end(), 0.0);
            std::fill(sum_gy_xhat.begin(), sum_gy_xhat.end(), 0.0);
            for_range(R, 0, nr, [&](const offsets& r) {
                const T* x = X + kk.x + r.x;
                const T* dy = DY + kk.dy + r.dy;
                const index_t pb = kk.param + r.param;
                for (index_t i = 0; i < n; ++i) {
                    const index_t s = kk.stat + i * ss, pi = pb + i * inner.sparam, lane = inner.reduced ? 0 : i;
                    const double xhat = (double(x[i * inner.sx]) - mean[lane]) * double(a.rstd[s]);
                    const double d = double(dy[i * inner.sdy]);
                    const double gy = a.gamma ? d * double(a.gamma[pi]) : d;
                    sum_gy[lane] += gy;
                    sum_gy_xhat[lane] += gy * xhat;
                    if (dg) dg[pi] += d * xhat;
                    if (db) db[pi] += d;
                }
            });
            // sweep 2: dx
            for_range(R, 0, nr, [&](const offsets& r) {
                const T* x = X + kk.x + r.x;
                const T* dy = DY + kk.dy + r.dy;
                T* dx = DX + kk.y + r.y;
                const index_t pb = kk.param + r.param;
                for (index_t i = 0; i < n; ++i) {
                    const index_t s = kk.stat + i * ss, pi = pb + i * inner.sparam, lane = inner.reduced ? 0 : i;
                    const double rstd = double(a.rstd[s]);
                    const double d = double(dy[i * inner.sdy]);
                    const double gy = a.gamma ? d * double(a.gamma[pi]) : d;
                    double v = gy;
                    if (!a.constant_stats) {
                        const double xhat = (double(x[i * inner.sx]) - mean[lane]) * rstd;
                        v -= xhat * sum_gy_xhat[lane] * inv_n;
                        if (!spec.rms) v -= sum_gy[lane] * inv_n;
                    }
                    dx[i * inner.sy] = T(rstd * v);
                }
            });
        });
    }
    for (std::size_t i = 0; i < pc; ++i) {
        double g = 0, bsum = 0;
        for (int t = 0; t < nt; ++t) g += dg_parts[std::size_t(t) * pc + i], bsum += db_parts[std::size_t(t) * pc + i];
        if (a.dgamma) a.dgamma[i] = T(g);
        if (a.dbeta) a.dbeta[i] = T(bsum);
    }
}

}  // namespace normspec::engine

#endif  // NORMSPEC_ENGINE_BACKWARD_HPP

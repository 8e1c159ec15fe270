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
    const bool contiguous = inner.sx == 1 && inner.sdy == 1 && inner.sy == 1;
    bool params_fixed_per_row = true;  // columns: the lanes' parameters do not change from row to row
    for (auto& d : R)
        if (d.sparam != 0) params_fixed_per_row = false;
    const bool vector_rows = contiguous && inner.reduced && inner.sparam <= 1;
    const bool vector_columns = contiguous && !inner.reduced && inner.sparam <= 1 && params_fixed_per_row;
    const T* X = a.x.data;
    const T* DY = a.dy.data;
    T* DX = a.dx.data;

#pragma omp parallel num_threads(nt)
    {
        const int t = thread_id(), team = team_size();
        double* dg = pc ? &dg_parts[std::size_t(t) * pc] : nullptr;
        double* db = pc ? &db_parts[std::size_t(t) * pc] : nullptr;
        std::vector<double> sum_gy(lanes), sum_gy_xhat(lanes), mean(lanes);
        // ---- vector kernels for contiguous runs (x, dy, dx all step 1 along the innermost loop) ----
        using V = simd::vec<T>;
        constexpr index_t L = simd::width<T>;
        std::vector<T> dgT(vector_rows && inner.sparam == 1 ? pc : 0), dbT(dgT.size());
        index_t pending = 0;  // runs accumulated in dgT/dbT since they were last merged into dg/db
        auto flush_params = [&] {
            for (std::size_t i = 0; i < dgT.size(); ++i) {
                if (dg) dg[i] += double(dgT[i]);
                if (db) db[i] += double(dbT[i]);
                dgT[i] = dbT[i] = T(0);
            }
            pending = 0;
        };
        // rows: one statistic per kept index, a run per reduced index
        auto rows_kernel = [&](const offsets& kk) {
            double m = a.mean ? double(a.mean[kk.stat]) : 0.0;
            const double rstd = double(a.rstd[kk.stat]);
            if (a.mean && !a.constant_stats) {  // the exact mean, from x and the rounded saved one
                const T mt = T(m);
                double residue = 0;
                for_range(R, 0, nr, [&](const offsets& r) {
                    const T* x = X + kk.x + r.x;
                    residue += double(simd::fold4(x, n, [&](auto acc, auto v) { return acc + (v - decltype(v)(mt)); }));
                });
                m = double(mt) + residue * inv_n;
            }
            const T mhi = T(m), mlo = T(m - double(mhi)), rs = T(rstd);
            const V vmhi(mhi), vmlo(mlo), vrs(rs);
            auto xhat = [&](const T* x, index_t i) { return ((V::load_unaligned(x + i) - vmhi) - vmlo) * vrs; };
            auto xhat1 = [&](const T* x, index_t i) { return ((x[i] - mhi) - mlo) * rs; };
            double sgy = 0, sgyx = 0;
            for_range(R, 0, nr, [&](const offsets& r) {
                const T* x = X + kk.x + r.x;
                const T* dy = DY + kk.dy + r.dy;
                const index_t pb = kk.param + r.param;
                if (inner.sparam == 0) {  // gamma constant along the run
                    V a0(T(0)), a1(T(0)), b0(T(0)), b1(T(0));
                    index_t i = 0;
                    for (; i + 2 * L <= n; i += 2 * L) {
                        const V d0 = V::load_unaligned(dy + i), d1 = V::load_unaligned(dy + i + L);
                        a0 += d0, a1 += d1;
                        b0 = xsimd::fma(d0, xhat(x, i), b0);
                        b1 = xsimd::fma(d1, xhat(x, i + L), b1);
                    }
                    T sdy = xsimd::hadd(a0 + a1), sdx = xsimd::hadd(b0 + b1);
                    for (; i < n; ++i) sdy += dy[i], sdx += dy[i] * xhat1(x, i);
                    const double gv = a.gamma ? double(a.gamma[pb]) : 1.0;
                    sgy += gv * double(sdy);
                    sgyx += gv * double(sdx);
                    if (dg) dg[pb] += double(sdx);
                    if (db) db[pb] += double(sdy);
                } else {  // gamma along the run (LayerNorm, RMSNorm): dgamma and dbeta per element
                    V a0(T(0)), b0(T(0));
                    const T* g = a.gamma ? a.gamma + pb : nullptr;
                    T* pg = dgT.empty() ? nullptr : dgT.data() + pb;  // empty: no parameter gradient wanted
                    T* pbt = dbT.empty() ? nullptr : dbT.data() + pb;
                    index_t i = 0;
                    for (; i + L <= n; i += L) {
                        const V d = V::load_unaligned(dy + i), xh = xhat(x, i);
                        const V gy = g ? d * V::load_unaligned(g + i) : d;
                        a0 += gy;
                        b0 = xsimd::fma(gy, xh, b0);
                        if (pg) {
                            xsimd::fma(d, xh, V::load_unaligned(pg + i)).store_unaligned(pg + i);
                            (V::load_unaligned(pbt + i) + d).store_unaligned(pbt + i);
                        }
                    }
                    T s1 = xsimd::hadd(a0), s2 = xsimd::hadd(b0);
                    for (; i < n; ++i) {
                        const T xh = xhat1(x, i), gy = g ? dy[i] * g[i] : dy[i];
                        s1 += gy, s2 += gy * xh;
                        if (pg) pg[i] += dy[i] * xh, pbt[i] += dy[i];
                    }
                    sgy += double(s1);
                    sgyx += double(s2);
                    if (++pending == 64) flush_params();
                }
            });
            const T c1 = spec.rms || a.constant_stats ? T(0) : T(sgy * inv_n);
            const T c2 = a.constant_stats ? T(0) : T(sgyx * inv_n);
            const V vc1(c1), vc2(c2);
            for_range(R, 0, nr, [&](const offsets& r) {
                const T* x = X + kk.x + r.x;
                const T* dy = DY + kk.dy + r.dy;
                T* dx = DX + kk.y + r.y;
                const index_t pb = kk.param + r.param;
                const T* g = a.gamma ? a.gamma + pb : nullptr;
                const bool per_element = inner.sparam == 1 && g;
                const T gc = g && !per_element ? g[0] : T(1);
                index_t i = 0;
                for (; i + L <= n; i += L) {
                    const V d = V::load_unaligned(dy + i);
                    const V gy = per_element ? d * V::load_unaligned(g + i) : d * V(gc);
                    (xsimd::fnma(xhat(x, i), vc2, gy - vc1) * vrs).store_unaligned(dx + i);
                }
                for (; i < n; ++i) {
                    const T gy = dy[i] * (per_element ? g[i] : gc);
                    dx[i] = (gy - c1 - xhat1(x, i) * c2) * rs;
                }
            });
        };
        // columns: a statistic per lane of the contiguous kept run, rows in blocks of 64
        std::vector<T> cm_hi(vector_columns ? n : 0), cm_lo(cm_hi.size()), crs(cm_hi.size()), c1(cm_hi.size()), c2(cm_hi.size());
        std::vector<T> acc1(cm_hi.size()), acc2(cm_hi.size()), accg(cm_hi.size()), accb(cm_hi.size());
        std::vector<double> tot1(cm_hi.size()), tot2(cm_hi.size()), totg(cm_hi.size()), totb(cm_hi.size());
        auto columns_kernel = [&](const offsets& kk) {
            const index_t nv = n - n % L;
            auto blocks = [&](auto&& per_row, auto&& flush) {  // rows of R in blocks, then flush
                index_t in_block = 0;
                for_range(R, 0, nr, [&](const offsets& r) {
                    per_row(r);
                    if (++in_block == 64) flush(), in_block = 0;
                });
                if (in_block) flush();
            };
            std::fill(tot1.begin(), tot1.end(), 0.0);
            for (index_t j = 0; j < n; ++j) cm_hi[j] = a.mean ? a.mean[kk.stat + j * inner.sstat] : T(0);
            if (a.mean && !a.constant_stats) {
                std::fill(acc1.begin(), acc1.end(), T(0));
                blocks(
                    [&](const offsets& r) {
                        const T* x = X + kk.x + r.x;
                        index_t j = 0;
                        for (; j < nv; j += L)
                            (V::load_unaligned(acc1.data() + j) + (V::load_unaligned(x + j) - V::load_unaligned(cm_hi.data() + j)))
                                .store_unaligned(acc1.data() + j);
                        for (; j < n; ++j) acc1[j] += x[j] - cm_hi[j];
                    },
                    [&] {
                        for (index_t j = 0; j < n; ++j) tot1[j] += double(acc1[j]), acc1[j] = T(0);
                    });
            }
            for (index_t j = 0; j < n; ++j) {
                const double m = double(cm_hi[j]) + tot1[j] * inv_n;
                cm_hi[j] = T(m);
                cm_lo[j] = T(m - double(cm_hi[j]));
                crs[j] = a.rstd[kk.stat + j * inner.sstat];
            }
            const T* g = a.gamma ? a.gamma + kk.param : nullptr;  // along the lanes, step inner.sparam (0 or 1)
            auto gvec = [&](index_t j) { return !g ? V(T(1)) : inner.sparam == 1 ? V::load_unaligned(g + j) : V(g[0]); };
            auto g1 = [&](index_t j) { return !g ? T(1) : g[j * inner.sparam]; };
            auto xhv = [&](const T* x, index_t j) {
                return ((V::load_unaligned(x + j) - V::load_unaligned(cm_hi.data() + j)) - V::load_unaligned(cm_lo.data() + j)) *
                       V::load_unaligned(crs.data() + j);
            };
            auto xh1 = [&](const T* x, index_t j) { return ((x[j] - cm_hi[j]) - cm_lo[j]) * crs[j]; };
            std::fill(tot1.begin(), tot1.end(), 0.0), std::fill(tot2.begin(), tot2.end(), 0.0);
            std::fill(totg.begin(), totg.end(), 0.0), std::fill(totb.begin(), totb.end(), 0.0);
            for (auto* v : {&acc1, &acc2, &accg, &accb}) std::fill(v->begin(), v->end(), T(0));
            blocks(
                [&](const offsets& r) {
                    const T* x = X + kk.x + r.x;
                    const T* dy = DY + kk.dy + r.dy;
                    index_t j = 0;
                    for (; j < nv; j += L) {
                        const V d = V::load_unaligned(dy + j), xh = xhv(x, j), gy = d * gvec(j);
                        (V::load_unaligned(acc1.data() + j) + gy).store_unaligned(acc1.data() + j);
                        xsimd::fma(gy, xh, V::load_unaligned(acc2.data() + j)).store_unaligned(acc2.data() + j);
                        xsimd::fma(d, xh, V::load_unaligned(accg.data() + j)).store_unaligned(accg.data() + j);
                        (V::load_unaligned(accb.data() + j) + d).store_unaligned(accb.data() + j);
                    }
                    for (; j < n; ++j) {
                        const T xh = xh1(x, j), gy = dy[j] * g1(j);
                        acc1[j] += gy, acc2[j] += gy * xh, accg[j] += dy[j] * xh, accb[j] += dy[j];
                    }
                },
                [&] {
                    for (index_t j = 0; j < n; ++j) {
                        tot1[j] += double(acc1[j]), tot2[j] += double(acc2[j]), totg[j] += double(accg[j]), totb[j] += double(accb[j]);
                        acc1[j] = acc2[j] = accg[j] = accb[j] = T(0);
                    }
                });
            for (index_t j = 0; j < n; ++j) {
                c1[j] = spec.rms || a.constant_stats ? T(0) : T(tot1[j] * inv_n);
                c2[j] = a.constant_stats ? T(0) : T(tot2[j] * inv_n);
                const index_t pi = kk.param + j * inner.sparam;
                if (dg) dg[pi] += totg[j];
                if (db) db[pi] += totb[j];
            }
            for_range(R, 0, nr, [&](const offsets& r) {
                const T* x = X + kk.x + r.x;
                const T* dy = DY + kk.dy + r.dy;
                T* dx = DX + kk.y + r.y;
                index_t j = 0;
                for (; j < nv; j += L) {
                    const V gy = V::load_unaligned(dy + j) * gvec(j);
                    (xsimd::fnma(xhv(x, j), V::load_unaligned(c2.data() + j), gy - V::load_unaligned(c1.data() + j)) *
                     V::load_unaligned(crs.data() + j))
                        .store_unaligned(dx + j);
                }
                for (; j < n; ++j) dx[j] = (dy[j] * g1(j) - c1[j] - xh1(x, j) * c2[j]) * crs[j];
            });
        };
        const auto [kb, ke] = split(nk, t, team);
        for_range(K, kb, ke, [&](const offsets& kk) {
            if (vector_rows) {
                rows_kernel(kk);
                return;
            }
            if (vector_columns) {
                columns_kernel(kk);
                return;
            }
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
        if (pending) flush_params();
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

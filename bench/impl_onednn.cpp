// onednn (libdnnl-dev 2.6): batch_normalization_forward (NCHW, NHWC; InstanceNorm on NCHW as
// BatchNorm over a (1, N*C, H, W) view with gamma tiled per image) and layer_normalization_forward
// (rows; LayerNorm over C,H,W as rows of C*H*W). oneDNN 2.6 has no GroupNorm or RMSNorm.
// bwd: batch_normalization_backward and layer_normalization_backward (prop_kind::backward: dx, and
// dscale/dshift) from the statistics of one forward.
#include "bench.hpp"

#include <oneapi/dnnl/dnnl.hpp>

namespace {
using bench::bench_case;
using namespace dnnl;
using dt = memory::data_type;
using tag = memory::format_tag;

struct dnnl_runner : bench::owned_output {
    engine eng{engine::kind::cpu, 0};
    stream strm{eng};
    primitive prim;
    std::unordered_map<int, memory> args;
    bench::input_buffer gamma, beta;  // placed as the inputs are, when copied from them
    std::vector<float> mean, var;

    std::vector<float> dscale, dshift;

    dnnl_runner(const bench_case& c_, bench::op o_, const bench::inputs& in_) : owned_output(c_, o_, in_) {
        const bool backward = o == bench::op::bwd;
        const bool train = o == bench::op::fwd_train || backward;
        const bool bn = c.norm == "batch_norm", inorm = c.norm == "instance_norm";
        memory::desc md;
        std::int64_t channels;
        if (bn || inorm) {
            const auto N = c.N(), C = c.C(), H = c.shape[2], W = c.shape[3];
            md = inorm ? memory::desc({1, N * C, H, W}, dt::f32, tag::nchw)
                       : memory::desc({N, C, H, W}, dt::f32, c.nhwc() ? tag::nhwc : tag::nchw);
            channels = inorm ? N * C : C;
            for (std::int64_t i = 0; i < channels; ++i) gamma.push_back(in.gamma[i % C]), beta.push_back(in.beta[i % C]);
            mean = bn && !train ? rm : std::vector<float>(channels);
            var = bn && !train ? rv : std::vector<float>(channels);
            auto flags = normalization_flags::use_scale | normalization_flags::use_shift;
            if (bn && !train) flags |= normalization_flags::use_global_stats;
            batch_normalization_forward::desc d(bn && !train ? prop_kind::forward_inference : prop_kind::forward_training, md,
                                                bench::eps, flags);
            batch_normalization_forward::primitive_desc pd(d, eng);
            prim = batch_normalization_forward(pd);
            if (backward) {
                batch_normalization_backward::desc bd(prop_kind::backward, md, md, bench::eps, flags);
                backward_prim = batch_normalization_backward(batch_normalization_backward::primitive_desc(bd, eng, pd));
            }
        } else {
            const std::int64_t rows = c.N(), n = c.size() / c.N();
            md = memory::desc({rows, n}, dt::f32, tag::ab);
            channels = n;
            gamma = in.gamma, beta = in.beta;
            mean.resize(rows), var.resize(rows);
            layer_normalization_forward::desc d(train ? prop_kind::forward_training : prop_kind::forward_inference, md,
                                                bench::eps, normalization_flags::use_scale | normalization_flags::use_shift);
            layer_normalization_forward::primitive_desc pd(d, eng);
            prim = layer_normalization_forward(pd);
            if (backward) {
                layer_normalization_backward::desc bd(prop_kind::backward, md, md, bench::eps,
                                                      normalization_flags::use_scale | normalization_flags::use_shift);
                backward_prim = layer_normalization_backward(layer_normalization_backward::primitive_desc(bd, eng, pd));
            }
        }
        const memory::desc pmd({channels}, dt::f32, tag::a);
        const memory::desc smd({std::int64_t(mean.size())}, dt::f32, tag::a);
        args[DNNL_ARG_SRC] = memory(md, eng, const_cast<float*>(in.x.data()));
        args[DNNL_ARG_DST] = memory(md, eng, out.data());
        args[DNNL_ARG_SCALE] = memory(pmd, eng, gamma.data());
        args[DNNL_ARG_SHIFT] = memory(pmd, eng, beta.data());
        args[DNNL_ARG_MEAN] = memory(smd, eng, mean.data());
        args[DNNL_ARG_VARIANCE] = memory(smd, eng, var.data());
        if (backward) {
            dscale.resize(gamma.size()), dshift.resize(beta.size());
            prim.execute(strm, args);  // the forward: its statistics feed every backward
            strm.wait();
            bargs = args;
            bargs.erase(DNNL_ARG_DST);
            bargs[DNNL_ARG_DIFF_DST] = memory(md, eng, const_cast<float*>(in.dy.data()));
            bargs[DNNL_ARG_DIFF_SRC] = memory(md, eng, out.data());
            bargs[DNNL_ARG_DIFF_SCALE] = memory(pmd, eng, dscale.data());
            bargs[DNNL_ARG_DIFF_SHIFT] = memory(pmd, eng, dshift.data());
        }
    }
    primitive backward_prim;
    std::unordered_map<int, memory> bargs;
    void run() override {
        if (o == bench::op::bwd)
            backward_prim.execute(strm, bargs);
        else
            prim.execute(strm, args);
        strm.wait();
    }
};

const bench::registration reg("onednn", [](const bench_case& c, bench::op o, int, const bench::inputs& in) -> std::unique_ptr<bench::runner> {
    const bool supported = c.norm == "batch_norm" || c.norm == "layer_norm" || c.norm == "layer_norm_cnn" ||
                           (c.norm == "instance_norm" && !c.nhwc());
    if (!supported) return nullptr;
    return std::make_unique<dnnl_runner>(c, o, in);
});
}  // namespace

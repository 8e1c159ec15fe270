// The normspec command end to end: `normspec run` on the PyTorch reference data, NCHW and NHWC,
// train and eval, and one-line errors with a non-zero exit for bad input.
#include "helpers.hpp"

#include <xtensor/xmanipulation.hpp>
#include <xtensor/xnpy.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace fs = std::filesystem;

namespace {

const std::string refdir = NORMSPEC_REFERENCE_DIR;

struct cli_run {
    int status;
    std::string err;
};

/// A directory of this process's own, removed with everything in it when the tests exit.
struct scratch_dir {
    fs::path path = fs::temp_directory_path() / ("normspec_cli_" + std::to_string(::getpid()));
    scratch_dir() { fs::create_directories(path); }
    ~scratch_dir() {
        std::error_code ec;  // a failed clean-up must not turn a passing run into a crash
        fs::remove_all(path, ec);
    }
};

const fs::path& scratch() {
    static const scratch_dir dir;
    return dir.path;
}

cli_run normspec_cli(const std::string& args) {
    const auto err = scratch() / "stderr.txt";
    const std::string cmd = std::string(NORMSPEC_CLI) + " " + args + " 2>" + err.string() + " >/dev/null";
    const int rc = std::system(cmd.c_str());
    std::ifstream f(err);
    std::stringstream s;
    s << f.rdbuf();
    return {WEXITSTATUS(rc), s.str()};
}

xt::xarray<double> want(const std::string& c, const std::string& f) { return xt::load_npy<double>(refdir + "/" + c + "/" + f + ".npy"); }
xt::xarray<double> got(const fs::path& out, const std::string& f) {
    return xt::cast<double>(xt::load_npy<float>((out / (f + ".npy")).string()));
}

/// Runs `norm` on case `c` in NCHW (or BTD) and, for 4-d data, in NHWC; checks the outputs.
void check_case(const std::string& c, const std::string& norm, const std::string& extra, bool has_mean = true,
                bool has_beta = true) {
    CAPTURE(c);
    const std::string params = " --gamma " + refdir + "/" + c + "/gamma.npy" + (has_beta ? " --beta " + refdir + "/" + c + "/beta.npy" : "");
    xt::xarray<float> x = xt::load_npy<float>(refdir + "/" + c + "/x.npy");
    const bool cnn = x.dimension() == 4;
    for (int nhwc = 0; nhwc < (cnn ? 2 : 1); ++nhwc) {
        CAPTURE(nhwc);
        const fs::path out = scratch() / (c + (nhwc ? "_nhwc" : "_nchw"));
        std::string xpath = refdir + "/" + c + "/x.npy", dypath = refdir + "/" + c + "/dy.npy", layout = cnn ? "NCHW" : "BTD";
        if (nhwc) {
            xpath = (scratch() / (c + "_x_nhwc.npy")).string();
            dypath = (scratch() / (c + "_dy_nhwc.npy")).string();
            xt::xarray<float> xt_ = xt::transpose(x, {0, 2, 3, 1});
            xt::dump_npy(xpath, xt_);
            xt::xarray<float> dy_ = xt::transpose(xt::xarray<float>(xt::load_npy<float>(refdir + "/" + c + "/dy.npy")), {0, 2, 3, 1});
            xt::dump_npy(dypath, dy_);
            layout = "NHWC";
        }
        const auto r = normspec_cli("run --norm " + norm + " --layout " + layout + " --x " + xpath + params + " " + extra +
                                    " --dy " + dypath + " --out " + out.string());
        REQUIRE_MESSAGE(r.status == 0, r.err);
        xt::xarray<double> y = got(out, "y");
        if (nhwc) y = xt::transpose(y, {0, 3, 1, 2});
        CHECK(th::rel_err(y, want(c, "y")) < 2e-6);
        CHECK(th::rel_err(got(out, "rstd"), want(c, "rstd")) < 2e-6);
        if (has_mean) CHECK(th::rel_err(got(out, "mean"), want(c, "mean")) < 2e-6);
        xt::xarray<double> dx = got(out, "dx");
        if (nhwc) dx = xt::transpose(dx, {0, 3, 1, 2});
        CHECK(th::rel_err(dx, want(c, "dx")) < 2e-6);
        CHECK(th::rel_err(got(out, "dgamma"), want(c, "dgamma")) < 2e-6);
        if (has_beta) CHECK(th::rel_err(got(out, "dbeta"), want(c, "dbeta")) < 2e-6);
    }
}

}  // namespace

TEST_CASE("normspec run matches PyTorch for the six aliases, NCHW and NHWC, train and eval, forward and backward") {
    const std::string bn = refdir + "/batch_norm_train/";
    check_case("batch_norm_train", "batch_norm",
               "--running-mean " + bn + "running_mean.npy --running-var " + bn + "running_var.npy");
    CHECK(th::rel_err(got(scratch() / "batch_norm_train_nchw", "running_mean"), want("batch_norm_train", "running_mean_out")) < 2e-6);
    CHECK(th::rel_err(got(scratch() / "batch_norm_train_nhwc", "running_var"), want("batch_norm_train", "running_var_out")) < 2e-6);
    const std::string be = refdir + "/batch_norm_eval/";
    check_case("batch_norm_eval", "batch_norm",
               "--mode eval --running-mean " + be + "running_mean.npy --running-var " + be + "running_var.npy");
    for (std::string mode : {"train", "eval"}) {
        CAPTURE(mode);
        check_case("layer_norm_cnn", "layer_norm_cnn", "--mode " + mode);
        check_case("layer_norm", "layer_norm", "--mode " + mode);
        check_case("layer_norm_large_offset", "layer_norm", "--mode " + mode);
        check_case("instance_norm", "instance_norm", "--mode " + mode);
        check_case("group_norm_1", "group_norm", "--groups 1 --mode " + mode);
        check_case("group_norm_4", "group_norm", "--groups 4 --mode " + mode);
        check_case("group_norm_12", "group_norm", "--groups 12 --mode " + mode);
        check_case("rms_norm", "rms_norm", "--mode " + mode, false, false);
    }
    CHECK_FALSE(fs::exists(scratch() / "rms_norm_nchw" / "mean.npy"));
}

TEST_CASE("normspec zoo prints the table generated from the specs") {
    const auto out = scratch() / "zoo.txt";
    REQUIRE(std::system((std::string(NORMSPEC_CLI) + " zoo > " + out.string()).c_str()) == 0);
    std::ifstream f(out);
    std::stringstream s;
    s << f.rdbuf();
    const std::string t = s.str();
    CHECK(t.find("| batch_norm     | norm<reduce<N,H,W>, affine<C>>") != std::string::npos);
    CHECK(t.find("norm<reduce<D>, scale<D>, rms>") != std::string::npos);
    CHECK(t.find("groups<C,dynamic>") != std::string::npos);
}

TEST_CASE("normspec plan prints the pattern, loops, sweeps and threads that forward() runs") {
    auto plan = [](const std::string& args) {
        const auto out = scratch() / "plan.txt";
        REQUIRE(std::system((std::string(NORMSPEC_CLI) + " plan " + args + " > " + out.string() + " 2>&1").c_str()) == 0);
        std::ifstream f(out);
        std::stringstream s;
        s << f.rdbuf();
        return s.str();
    };
    const auto bn = plan("--norm batch_norm --layout NCHW --shape 32,64,56,56 --threads 2");
    CHECK(bn.find("pattern: [reduce N, keep C, reduce H*W]") != std::string::npos);
    CHECK(bn.find("sweeps: fused per kept index") != std::string::npos);
    CHECK(bn.find("threads: 2 over kept indices") != std::string::npos);
    CHECK(bn.find("statistics: 64 over <C>, each across 100352 values") != std::string::npos);
    const auto bn_nhwc = plan("--norm batch_norm --layout NHWC --shape 32,56,56,64 --threads 2");
    CHECK(bn_nhwc.find("pattern: [reduce N*H*W, keep C]") != std::string::npos);
    CHECK(bn_nhwc.find("the reduction is split") != std::string::npos);
    const auto eval = plan("--norm batch_norm --layout NHWC --shape 32,56,56,64 --mode eval");
    CHECK(eval.find("sweeps: one: every element, with the running statistics") != std::string::npos);
    const auto gn = plan("--norm group_norm --layout NHWC --shape 2,96,96,320 --groups 32");
    CHECK(gn.find("pattern: [keep N, reduce H*W, keep G(C), reduce C/G]") != std::string::npos);
    CHECK(gn.find("merged per group") != std::string::npos);
    const auto ln = plan("--norm layer_norm --layout TD --shape 4096,4096");
    CHECK(ln.find("pattern: [keep T, reduce D]") != std::string::npos);
    CHECK(ln.find("stores: streaming") != std::string::npos);
    // a call moving less than the parallel bound (1 MiB) runs on one thread of the two allowed
    CHECK(plan("--norm layer_norm --layout TD --shape 8,4096 --threads 2")
              .find("threads: 1 (x and y under 1024 KiB, the parallel bound: a team would cost more than it saves)") != std::string::npos);
    CHECK(plan("--norm layer_norm --layout TD --shape 8,4096 --threads 1").find("threads: 1\n") != std::string::npos);
    // rows shorter than four vectors are rows (no reduced loop outside them to make columns of)
    const auto short_rows = plan("--norm layer_norm --layout TD --shape 512,48");
    CHECK(short_rows.find("sweeps: fused per kept index") != std::string::npos);
    // BatchNorm's planes across 2048 channels: 2x3 planes (shorter than a vector of floats, AVX2's
    // 8 or AVX-512's 16) in blocks of channels; 7x7 planes in two sweeps in memory order, the planes of each sample as one flat run
    const auto planes = plan("--norm batch_norm --layout NCHW --shape 16,2048,2,3 --threads 2");
    CHECK(planes.find("sweeps: per block of C") != std::string::npos);
    CHECK(planes.find("threads: 2 over blocks of kept indices") != std::string::npos);
    CHECK(planes.find("stores: cached") != std::string::npos);
    const auto big_planes = plan("--norm batch_norm --layout NCHW --shape 50,2048,7,7 --threads 2");
    CHECK(big_planes.find("sweeps: two: every statistic (one read of x, in memory order)") != std::string::npos);
    CHECK(big_planes.find("runs of every C back to back as one flat run") != std::string::npos);
    CHECK(big_planes.find("stores: streaming") != std::string::npos);
    // where grouped columns apply too (C*H*W up to 4096): they keep runs under three vectors, the
    // sweeps in memory order take longer ones
    CHECK(plan("--norm batch_norm --layout NCHW --shape 64,32,4,5").find("merged per group") != std::string::npos);
    CHECK(plan("--norm batch_norm --layout NCHW --shape 8,64,7,7").find("one read of x, in memory order") != std::string::npos);
    for (auto [norm, layout, shape] : {std::tuple{"layer_norm_cnn", "NCHW", "2,3,4,5"}, {"instance_norm", "NHWC", "2,4,5,3"},
                                       {"rms_norm", "BTD", "2,3,4"}, {"group_norm", "NCHW", "2,4,3,3 --groups 2"}})
        CHECK(plan(std::string("--norm ") + norm + " --layout " + layout + " --shape " + shape).find("pattern: [") != std::string::npos);
}

TEST_CASE("bad arguments or files: one line on stderr, a non-zero exit, no crash") {
    const std::string x = refdir + "/layer_norm/x.npy";
    auto one_line_error = [](const cli_run& r, const std::string& text) {
        CAPTURE(r.err);
        CHECK(r.status != 0);
        CHECK(r.status < 128);  // not a signal
        CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
        CHECK(r.err.find(text) != std::string::npos);
    };
    const std::string o = " --out " + (scratch() / "bad").string();
    one_line_error(normspec_cli("run --norm batch_norm --layout BTD --x " + x + o), "reduce<N> names an axis that the tensor <B,T,D> does not have");
    one_line_error(normspec_cli("run --norm layer_norm --layout BQD --x " + x + o), "unknown axis letter 'Q'");
    one_line_error(normspec_cli("run --norm layer_norm --layout BD --x " + x + o), "give 2 names to a tensor of rank 3");
    one_line_error(normspec_cli("run --norm layer_norm --layout BTD --x " + x + " --gamma " + refdir + "/instance_norm/gamma.npy" + o),
                   "gamma axis D has extent 5 but the tensor's axis D has extent 37");
    one_line_error(normspec_cli("run --norm no_such_norm --layout BTD --x " + x + o), "no_such_norm");
    one_line_error(normspec_cli("run --norm layer_norm --layout BTD --x /nonexistent.npy" + o), "/nonexistent.npy");
    one_line_error(normspec_cli("run --norm layer_norm --layout BTD --x " + std::string(NORMSPEC_CLI) + o), "is not a .npy file");
    one_line_error(normspec_cli("run --norm layer_norm --layout BTD --x " + x + " --eps 0" + o), "eps must be a finite number > 0");
    one_line_error(normspec_cli("run --norm group_norm --layout NCHW --x " + refdir + "/group_norm_4/x.npy --groups 5" + o),
                   "G = 5 does not divide axis C of extent 12");
    one_line_error(normspec_cli("run --norm batch_norm --layout NCHW --mode eval --x " + refdir + "/batch_norm_eval/x.npy" + o),
                   "needs running statistics");
    one_line_error(normspec_cli("run --norm layer_norm --layout BTD --mode sideways --x " + x + o), "--mode must be train or eval");
    one_line_error(normspec_cli("plan --norm layer_norm --layout TD --shape 4,x"), "--shape: 'x' is not an extent");
    one_line_error(normspec_cli("plan --norm batch_norm --layout TD --shape 4,8"), "reduce<N> names an axis that the tensor <T,D> does not have");
}

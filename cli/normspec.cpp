// cli/normspec.cpp
// The normspec command:
//   normspec zoo   the seed's table, generated from the aliases' derived facts;
//   normspec run   one norm of the zoo on .npy data, any layout, train or eval;
//   normspec plan  the loops a norm runs on a layout and shape, as forward() would run them.
#include "npy.hpp"

#include <normspec/dynamic.hpp>
#include <normspec/zoo.hpp>

#include <CLI/CLI.hpp>

#include <filesystem>
#include <iomanip>
#include <iostream>
#include <map>
#include <sstream>

namespace {

using namespace normspec;

const std::map<std::string, spec_desc>& zoo_specs() {
    static const std::map<std::string, spec_desc> specs{
        {"batch_norm", describe<batch_norm>()},   {"layer_norm_cnn", describe<layer_norm_cnn>()},
        {"layer_norm", describe<layer_norm>()},   {"instance_norm", describe<instance_norm>()},
        {"group_norm", describe<group_norm<>>()}, {"rms_norm", describe<rms_norm>()}};
    return specs;
}

void print_zoo() {
    const auto rows = zoo_table();
    const std::vector<std::string> head{"name", "spec", "statistics across", "params on", "params",
                                        "train!=eval", "couples batch", "packing-safe"};
    std::vector<std::vector<std::string>> cells;
    auto yes = [](bool b) { return std::string(b ? "yes" : "no"); };
    for (auto& r : rows)
        cells.push_back({r.name, r.spec, r.stats_across, r.param_axes.empty() ? "-" : r.param_axes, r.params,
                         yes(r.train_eval_differ), yes(r.couples_batch), yes(r.packing_safe)});
    std::vector<std::size_t> width(head.size());
    for (std::size_t c = 0; c < head.size(); ++c) {
        width[c] = head[c].size();
        for (auto& row : cells) width[c] = std::max(width[c], row[c].size());
    }
    auto line = [&](const std::vector<std::string>& row) {
        std::cout << "|";
        for (std::size_t c = 0; c < row.size(); ++c) std::cout << " " << std::left << std::setw(int(width[c])) << row[c] << " |";
        std::cout << "\n";
    };
    line(head);
    std::cout << "|";
    for (auto w : width) std::cout << std::string(w + 2, '-') << "|";
    std::cout << "\n";
    for (auto& row : cells) line(row);
}

struct run_options {
    std::string norm, layout, x, gamma, beta, running_mean, running_var, dy, out, mode = "train";
    double eps = 1e-5, momentum = 0.1;
    std::ptrdiff_t groups = 0;
    int threads = 0;
};

std::vector<std::string_view> layout_names(const std::string& layout) {
    static const std::map<char, std::string_view> known{{'N', axes::N::name}, {'C', axes::C::name}, {'H', axes::H::name},
                                                        {'W', axes::W::name}, {'B', axes::B::name}, {'T', axes::T::name},
                                                        {'D', axes::D::name}};
    std::vector<std::string_view> names;
    for (char c : layout) {
        auto it = known.find(c);
        if (it == known.end())
            throw std::invalid_argument(std::string("--layout: unknown axis letter '") + c + "' (known: N C H W B T D)");
        names.push_back(it->second);
    }
    return names;
}

struct plan_options {
    std::string norm, layout, shape, mode = "train";
    std::ptrdiff_t groups = 0;
    int threads = 0;
};

void print_plan(const plan_options& o) {
    const spec_desc& spec = zoo_specs().at(o.norm);
    const auto names = layout_names(o.layout);
    std::vector<engine::index_t> shape;
    std::stringstream ss(o.shape);
    for (std::string e; std::getline(ss, e, ',');) {
        std::size_t used = 0;
        long long v = -1;
        try {
            v = std::stoll(e, &used);
        } catch (const std::exception&) {
        }
        if (used != e.size() || v < 0) throw std::invalid_argument("--shape: '" + e + "' is not an extent (give e.g. 32,64,56,56)");
        shape.push_back(v);
    }
    if (o.mode != "train" && o.mode != "eval") throw std::invalid_argument("--mode must be train or eval, got " + o.mode);
    const auto b = engine::bind(spec, names, shape.data(), int(shape.size()), o.groups);
    std::vector<float> one(1);
    auto x = engine::contiguous(one.data(), shape);
    const auto p = engine::make_plan(b, x, x, spec.kind != param_kind::none);
    const bool use_running = spec.couples_batch && o.mode == "eval";
    const auto d = engine::decide<float>(p, x.size(), o.threads, 0, use_running, false);
    std::cout << o.norm << " = " << to_string(spec) << " on " << o.layout << " " << o.shape << " (float32, " << o.mode << ")\n";
    std::cout << "statistics: " << b.stat_count << " over <";
    for (std::size_t i = 0; i < b.stat_names.size(); ++i) std::cout << (i ? "," : "") << b.stat_names[i];
    std::cout << ">, each across " << b.reduction_count << " values\n";
    std::cout << engine::explain(p, d);
}

template <class T>
void run(const run_options& o) {
    const spec_desc& spec = zoo_specs().at(o.norm);
    const auto names = layout_names(o.layout);
    const xt::xarray<T> x = cli::load<T>(o.x);
    dynamic_inputs<T> in;
    xt::xarray<T> g, b, rm, rv;
    if (!o.gamma.empty()) g = cli::load<T>(o.gamma), in.gamma = &g;
    if (!o.beta.empty()) b = cli::load<T>(o.beta), in.beta = &b;
    if (o.running_mean.empty() != o.running_var.empty())
        throw std::invalid_argument("--running-mean and --running-var go together");
    if (!o.running_mean.empty()) {
        rm = cli::load<T>(o.running_mean), rv = cli::load<T>(o.running_var);
        in.running_mean = &rm, in.running_var = &rv;
    }
    if (o.mode != "train" && o.mode != "eval") throw std::invalid_argument("--mode must be train or eval, got " + o.mode);
    in.run_mode = o.mode == "train" ? mode::train : mode::eval;
    in.eps = o.eps;
    in.momentum = o.momentum;
    in.groups = o.groups;
    in.threads = o.threads;
    const auto r = forward_dynamic<T>(spec, names, x, in);

    namespace fs = std::filesystem;
    fs::create_directories(o.out);
    auto path = [&](const char* f) { return (fs::path(o.out) / f).string(); };
    xt::dump_npy(path("y.npy"), r.y);
    if (in.run_mode == mode::train || spec.couples_batch) {
        if (!spec.rms) xt::dump_npy(path("mean.npy"), r.mean);
        xt::dump_npy(path("rstd.npy"), r.rstd);
    }
    if (in.run_mode == mode::train && in.running_mean) {
        xt::dump_npy(path("running_mean.npy"), rm);
        xt::dump_npy(path("running_var.npy"), rv);
    }
    if (!o.dy.empty()) {  // gradients of sum(dy * y)
        const xt::xarray<T> dy = cli::load<T>(o.dy);
        const auto g = backward_dynamic<T>(spec, names, x, dy, r, in);
        xt::dump_npy(path("dx.npy"), g.dx);
        if (spec.kind != param_kind::none) xt::dump_npy(path("dgamma.npy"), g.dgamma);
        if (spec.kind == param_kind::affine) xt::dump_npy(path("dbeta.npy"), g.dbeta);
    }
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"normspec: normalization layers as compile-time specifications"};
    app.require_subcommand(1);
    app.failure_message(CLI::FailureMessage::simple);
    app.add_subcommand("zoo", "print the seed's norms with the facts derived from their specs");
    auto* run_cmd = app.add_subcommand("run", "run one norm of the zoo on .npy data; writes DIR/y.npy and statistics");
    run_options o;
    std::vector<std::string> norm_names;
    for (auto& [k, v] : zoo_specs()) norm_names.push_back(k);
    run_cmd->add_option("--norm", o.norm, "which norm")->required()->check(CLI::IsMember(norm_names));
    run_cmd->add_option("--layout", o.layout, "axis letters in memory order, e.g. NCHW, NHWC, BTD")->required();
    run_cmd->add_option("--x", o.x, "input .npy (float32 or float64)")->required()->check(CLI::ExistingFile);
    run_cmd->add_option("--gamma", o.gamma, "gamma .npy, on the spec's parameter axes")->check(CLI::ExistingFile);
    run_cmd->add_option("--beta", o.beta, "beta .npy")->check(CLI::ExistingFile);
    run_cmd->add_option("--groups", o.groups, "number of groups (group_norm)")->check(CLI::PositiveNumber);
    run_cmd->add_option("--eps", o.eps, "added to the variance (default 1e-5)");
    run_cmd->add_option("--mode", o.mode, "train (batch statistics) or eval (running statistics)");
    run_cmd->add_option("--momentum", o.momentum, "running-statistics momentum (default 0.1)");
    run_cmd->add_option("--running-mean", o.running_mean, "running mean .npy (batch_norm)")->check(CLI::ExistingFile);
    run_cmd->add_option("--running-var", o.running_var, "running var .npy (batch_norm)")->check(CLI::ExistingFile);
    run_cmd->add_option("--threads", o.threads, "threads (default: OpenMP's)");
    run_cmd->add_option("--dy", o.dy, "gradient of the output .npy: also writes dx.npy, dgamma.npy, dbeta.npy")->check(CLI::ExistingFile);
    run_cmd->add_option("--out", o.out, "output folder")->required();
    auto* plan_cmd = app.add_subcommand("plan", "print the loops a norm runs on a layout and shape");
    plan_options po;
    plan_cmd->add_option("--norm", po.norm, "which norm")->required()->check(CLI::IsMember(norm_names));
    plan_cmd->add_option("--layout", po.layout, "axis letters in memory order, e.g. NCHW")->required();
    plan_cmd->add_option("--shape", po.shape, "extents in layout order, e.g. 32,64,56,56")->required();
    plan_cmd->add_option("--groups", po.groups, "number of groups (group_norm)")->check(CLI::PositiveNumber);
    plan_cmd->add_option("--threads", po.threads, "threads (default: OpenMP's)");
    plan_cmd->add_option("--mode", po.mode, "train or eval");
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        if (e.get_exit_code() == 0) return app.exit(e);  // --help
        std::cerr << "normspec: error: " << e.what() << "\n";
        return e.get_exit_code();
    }
    try {
        if (app.got_subcommand("zoo")) {
            print_zoo();
        } else if (app.got_subcommand("plan")) {
            print_plan(po);
        } else {
            if (cli::npy_dtype(o.x) == cli::dtype::f32)
                run<float>(o);
            else
                run<double>(o);
        }
    } catch (const std::exception& e) {
        std::string what = e.what();
        if (what.rfind("normspec: ", 0) == 0) what.erase(0, 10);
        std::cerr << "normspec: error: " << what << "\n";
        return 2;
    }
    return 0;
}

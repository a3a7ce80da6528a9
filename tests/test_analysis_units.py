"""alexnet.analysis without data: the Figure 1 measurement, the exact k-NN search, the
filter grid, the prediction panel and the ablation table, each against an independent
reference (a hand-made curve, brute-force numpy, the layout written out, the paper)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.analysis import ablations, filters, neighbors, overfitting, relu_tanh
from alexnet.eval.panels import prediction_panel
from alexnet.errors import UserError
from alexnet.models import build_model, list_models


# ----------------------------------------------------------------------------- Figure 1

def test_crossing_interpolates_between_the_epochs_around_the_target():
    # errors after epochs 1..4; 25% is crossed between epoch 2 (0.40) and 3 (0.20):
    # 2 + (0.40 - 0.25) / (0.40 - 0.20) = 2.75
    assert relu_tanh.crossing_epoch([0.7, 0.4, 0.2, 0.1]) == pytest.approx(2.75)
    # exactly on the target at an epoch
    assert relu_tanh.crossing_epoch([0.5, 0.25, 0.1]) == pytest.approx(2.0)
    # inside the first epoch, from the error before training (chance = 0.9): 0 + 0.65/0.75
    assert relu_tanh.crossing_epoch([0.15], start_error=0.9) == pytest.approx(0.65 / 0.75)
    assert relu_tanh.crossing_epoch([0.15]) == 1.0
    # never reached; a curve that goes back up after crossing counts its first crossing
    assert relu_tanh.crossing_epoch([0.9, 0.6, 0.3]) is None
    assert relu_tanh.crossing_epoch([0.5, 0.2, 0.6]) == pytest.approx(1 + 0.25 / 0.3)
    assert relu_tanh.crossing_epoch([0.5, 0.3], target=0.4) == pytest.approx(1.5)


def test_summary_gives_per_seed_ratio_and_marks_lower_bounds():
    relu = [0.6, 0.3, 0.2, 0.1]            # 2.5 epochs
    tanh_fast = [0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]  # 6.5 epochs
    runs = [
        {"activation": "relu", "seed": 0, "errors": relu, "lr": 0.01},
        {"activation": "relu", "seed": 1, "errors": [0.5, 0.2], "lr": 0.01},   # 1 + 0.25/0.3
        {"activation": "tanh", "seed": 0, "errors": tanh_fast, "lr": 0.03},
        {"activation": "tanh", "seed": 1, "errors": [0.8, 0.7, 0.6], "lr": 0.03},  # never: >= 3 epochs
    ]
    s = relu_tanh.summarise_figure1(runs)
    e1 = 1 + 0.25 / 0.3
    assert s["activations"]["relu"]["epochs_to_target"] == pytest.approx([2.5, e1])
    assert s["activations"]["tanh"]["epochs_to_target"] == pytest.approx([6.5, 3.0])
    assert s["activations"]["tanh"]["lower_bound"] and not s["activations"]["relu"]["lower_bound"]
    assert s["ratio_per_seed"] == pytest.approx([6.5 / 2.5, 3.0 / e1])
    assert s["ratio_mean"] == pytest.approx((6.5 / 2.5 + 3.0 / e1) / 2)
    assert s["ratio_std"] == pytest.approx(np.std([6.5 / 2.5, 3.0 / e1], ddof=1))
    assert s["ratio_of_means"] == pytest.approx(((6.5 + 3.0) / 2) / ((2.5 + e1) / 2))
    assert s["ratio_is_lower_bound"]


def test_summary_without_relu_crossing_has_no_ratio():
    s = relu_tanh.summarise_figure1([{"activation": "relu", "seed": 0, "errors": [0.8, 0.6]},
                             {"activation": "tanh", "seed": 0, "errors": [0.8, 0.7]}])
    assert s["ratio_mean"] is None and s["ratio_of_means"] is None


def test_four_layer_net_has_four_weight_layers_and_the_chosen_activation():
    for act, cls in (("relu", torch.nn.ReLU), ("tanh", torch.nn.Tanh)):
        net = relu_tanh.FourLayerNet(act)
        weighted = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        assert len(weighted) == 4
        assert sum(isinstance(m, cls) for m in net.modules()) == 3
        assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(UserError):
        relu_tanh.FourLayerNet("sigmoid")


def test_lr_grid_search_extends_past_an_edge_until_the_winner_is_inside():
    # error is a parabola in log10(lr) with its minimum at lr = 0.05
    def error_of(lr):
        tried.append(lr)
        return (math.log10(lr) - math.log10(0.05)) ** 2
    tried = []
    best, errors = relu_tanh.grid_search([0.001, 0.003, 0.01], error_of)
    # 0.01 wins on the edge -> 0.01 * 0.01 / 0.003 = 0.0333 wins on the edge -> 0.111: inside
    assert tried == pytest.approx([0.001, 0.003, 0.01, 0.01 ** 2 / 0.003, (0.01 ** 2 / 0.003) ** 2 / 0.01])
    assert best == pytest.approx(0.01 ** 2 / 0.003)
    # downwards as well, and at most max_extensions steps
    tried = []
    best, errors = relu_tanh.grid_search([1.0, 10.0], error_of, max_extensions=2)
    assert sorted(errors) == pytest.approx([0.01, 0.1, 1.0, 10.0]) and best == pytest.approx(0.1)
    # a winner inside the grid: nothing added
    tried = []
    assert relu_tanh.grid_search([0.01, 0.05, 0.2], error_of)[0] == 0.05 and len(tried) == 3



def test_lr_walk_starts_at_the_middle_and_stops_when_a_step_gets_no_better():
    minimum = {}

    def error_of(lr):          # a parabola in log2(lr) with its minimum at minimum["lr"]
        tried.append(lr)
        return (math.log2(lr) - math.log2(minimum["lr"])) ** 2
    grid = [0.0005, 0.001, 0.002]
    for at, expect_tried, expect_best in (
            (0.001, [0.001, 0.002, 0.0005], 0.001),              # the middle wins: both neighbours measured
            (0.004, [0.001, 0.002, 0.004, 0.008], 0.004),        # up, past the edge, until a step is worse
            (0.0005, [0.001, 0.002, 0.0005, 0.00025], 0.0005),  # up is worse: down instead
    ):
        minimum["lr"], tried = at, []
        chosen, errors = relu_tanh.walk_search(grid, error_of)
        assert tried == pytest.approx(expect_tried) and chosen == pytest.approx(expect_best)
        assert sorted(errors) == pytest.approx(sorted(expect_tried))
    # at most max_extensions steps past the grid
    minimum["lr"], tried = 1.0, []
    chosen, _ = relu_tanh.walk_search(grid, error_of, max_extensions=2)
    assert chosen == pytest.approx(0.008) and tried == pytest.approx([0.001, 0.002, 0.004, 0.008])


def test_four_layer_net_paper_init_is_gaussian_0_01_with_zero_biases():
    torch.manual_seed(0)
    net = relu_tanh.FourLayerNet("tanh", init="gaussian")
    weights = torch.cat([m.weight.flatten() for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))])
    assert len(weights) > 50_000
    # sample std of > 50,000 N(0, 0.01) draws: within 2% of 0.01 (the std error is ~0.3%)
    assert weights.std().item() == pytest.approx(0.01, rel=0.02)
    assert abs(weights.mean().item()) < 2e-4
    assert all(not m.bias.any() for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    # PyTorch's default init of conv1 (fan-in 75) is uniform with bound 1/sqrt(75): std 0.067
    default = relu_tanh.FourLayerNet("tanh").features[0].weight
    assert default.std().item() == pytest.approx(1 / math.sqrt(75) / math.sqrt(3), rel=0.1)
    with pytest.raises(UserError):
        relu_tanh.FourLayerNet("relu", init="xavier")



@pytest.mark.slow      # minutes of real runs: the second lane
def test_an_interrupted_figure1_run_carries_on_to_the_uninterrupted_result(tmp_path):
    """Killed after epoch 2 of 4, the run resumes from its partial file at epoch 3 and ends
    bit-identical to a run never interrupted; a partial file of another run is ignored."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(192, 3, 16, 16, generator=gen), torch.randint(0, 10, (192,), generator=gen)
    settings = relu_tanh.Settings(batch_size=32, max_epochs=4, target=0.0)
    whole = relu_tanh.train_run(x, y, "tanh", 0.01, 3, settings, 4, stop_at_target=False)

    partial = tmp_path / "run.partial.pt"
    seen = []

    def killed_in_epoch_3(activation, lr, seed, epoch, error):
        seen.append(epoch)
        if epoch == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        relu_tanh.train_run(x, y, "tanh", 0.01, 3, settings, 4, stop_at_target=False, partial=partial,
                            progress=killed_in_epoch_3)
    assert seen == [1, 2, 3] and partial.is_file()
    resumed_epochs = []
    resumed = relu_tanh.train_run(x, y, "tanh", 0.01, 3, settings, 4, stop_at_target=False, partial=partial,
                                  progress=lambda *a: resumed_epochs.append(a[3]))
    assert resumed_epochs == [3, 4]                  # epochs 1-2 came from the file, not trained again
    assert resumed["errors"] == whole["errors"] and resumed["losses"] == whole["losses"]
    assert resumed["steps"] == whole["steps"] == 4 * 6
    # Another lr finds the file but not its own run in it: it trains from epoch 1.
    other_epochs = []
    relu_tanh.train_run(x, y, "tanh", 0.02, 3, settings, 4, stop_at_target=False, partial=partial,
                        progress=lambda *a: other_epochs.append(a[3]))
    assert other_epochs == [1, 2, 3, 4]

def test_crossing_on_cuda_convnet_points_per_10000_images():
    # five points per epoch (50,000 images, one per 10,000): 25% is crossed between point 4
    # (0.30) and point 5 (0.20): 4 + 0.05 / 0.10 = 4.5 points = 0.9 epochs
    assert relu_tanh.crossing_epoch([0.8, 0.6, 0.4, 0.3, 0.2], points_per_epoch=5) == pytest.approx(0.9)
    assert relu_tanh.crossing_epoch([0.5, 0.2], start_error=0.9, points_per_epoch=5) == pytest.approx(
        (1 + 0.25 / 0.3) / 5)
    runs = [{"activation": "relu", "seed": 0, "errors": [0.5, 0.4, 0.3, 0.2], "points_per_epoch": 2},   # 1.75
            {"activation": "tanh", "seed": 0, "errors": [0.8, 0.6, 0.5, 0.45], "points_per_epoch": 2}]  # >= 2
    s = relu_tanh.summarise_figure1(runs)
    assert s["activations"]["relu"]["epochs_to_target"] == pytest.approx([1.75])
    assert s["activations"]["tanh"]["epochs_to_target"] == [2.0] and s["ratio_is_lower_bound"]
    assert s["ratio_per_seed"] == pytest.approx([2.0 / 1.75])


def test_neighbour_ratios_pair_each_lr_with_the_other_activations_chosen_one():
    def run(errors, diverged=False):
        return {"errors": errors, "points_per_epoch": 1, "diverged": diverged}
    search = {"relu": {0.001: run([0.5, 0.2]), 0.002: run([0.4, 0.3, 0.2]), 0.0005: run([0.6, 0.5])},
              "tanh": {0.001: run([0.8, 0.6, 0.5, 0.3, 0.2]), 0.002: run([0.9, 0.5, 0.4, 0.3, 0.3, 0.2]),
                       0.0005: run([1.0], diverged=True)}}
    rows = relu_tanh.neighbour_ratios(search, {"relu": 0.001, "tanh": 0.001}, 0.25)
    by = {(r["relu_lr"], r["tanh_lr"]): r for r in rows}
    relu_e, tanh_e = 1 + 0.25 / 0.3, 4.5
    assert set(by) == {(0.001, 0.001), (0.001, 0.002), (0.0005, 0.001), (0.002, 0.001)}   # the diverged run left out
    assert by[(0.001, 0.001)]["chosen"] and by[(0.001, 0.001)]["ratio"] == pytest.approx(tanh_e / relu_e)
    assert by[(0.001, 0.002)]["ratio"] == pytest.approx(5.5 / relu_e) and by[(0.001, 0.002)]["bound"] == ""
    assert by[(0.002, 0.001)]["ratio"] == pytest.approx(tanh_e / 2.5)
    # ReLU at 0.0005 never crossed within its 2 epochs: its epochs are a lower bound, the ratio an upper one
    assert by[(0.0005, 0.001)]["ratio"] == pytest.approx(tanh_e / 2) and by[(0.0005, 0.001)]["bound"] == "<="


def test_cuda_convnet_protocol_reports_per_block_in_one_fixed_order():
    """report_every: one error per block of images, each block's last minibatch the rest (cuda-convnet's
    10,000 = 78 x 128 + 16); order "fixed": the same sequence every epoch. With lr 0 nothing learns, so a
    fixed order repeats every block's error exactly, a fresh shuffle per epoch does not."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(192, 3, 16, 16, generator=gen) * 60, torch.randint(0, 10, (192,), generator=gen)
    settings = relu_tanh.Settings(batch_size=48, target=0.0, net="cuda-convnet-19pct", init="config",
                                  report_every=64, order="fixed")
    fixed = relu_tanh.train_run(x, y, "relu", 0.0, 1, settings, 3, stop_at_target=False)
    assert fixed["points_per_epoch"] == 3 and len(fixed["errors"]) == 9
    assert fixed["steps"] == 3 * 3 * 2                       # 48 + 16 per 64-image block
    assert fixed["errors"][:3] == fixed["errors"][3:6] == fixed["errors"][6:]
    assert all(e * 64 == round(e * 64) for e in fixed["errors"])      # whole images out of each block of 64
    settings.order = "shuffle"
    shuffled = relu_tanh.train_run(x, y, "relu", 0.0, 1, settings, 3, stop_at_target=False)
    assert shuffled["errors"][:3] != shuffled["errors"][3:6]
    # the per-epoch totals agree (same untrained network, same images)
    assert sum(shuffled["errors"][:3]) == pytest.approx(sum(fixed["errors"][:3]))
    with pytest.raises(UserError, match="report blocks"):
        settings.report_every = 100
        relu_tanh.train_run(x, y, "relu", 0.0, 1, settings, 1)


@pytest.mark.parametrize("net", [n for n in relu_tanh.NETS if n != "ours"])
def test_every_cuda_convnet_arm_swaps_every_neuron_and_nothing_else(net):
    settings = relu_tanh.Settings(net=net, init="config")
    relu, tanh = (relu_tanh.build_net(settings, act, 3, 10, 32) for act in ("relu", "tanh"))
    kinds = [type(m).__name__ for m in relu.modules()]
    assert kinds.count("ReLU") >= 3 and "Tanh" not in kinds
    assert [k.replace("ReLU", "Tanh") for k in kinds] == [type(m).__name__ for m in tanh.modules()]
    with pytest.raises(UserError, match="config"):
        relu_tanh.build_net(relu_tanh.Settings(net=net, init="gaussian"), "relu", 3, 10, 32)


def test_runs_of_our_net_keep_the_key_they_were_stored_with(tmp_path):
    """Settings added for cuda-convnet's nets stay out of the key of our net's runs at their defaults,
    so the runs stored before they existed are re-used, not refused."""
    stored = ["batch_size", "cache", "extra_epochs", "init", "inputs", "max_epochs", "max_steps", "momentum",
              "split", "subset_seed", "target", "train_subset"]
    path = tmp_path / "run-relu-lr0.001-s0-e25.json"
    assert sorted(relu_tanh.RunStore.key(path, relu_tanh.Settings())) == stored
    other = relu_tanh.Settings(net="cuda-convnet-19pct", report_every=10000, order="fixed", init="config")
    assert {"net", "report_every", "order"} <= set(relu_tanh.RunStore.key(path, other))


def test_a_runs_cap_only_decides_where_it_stops(tmp_path):
    """Raising --max-epochs carries a run in progress on, and re-uses a run that reached the target
    before both caps; a run that ended at its cap is trained again (it would have gone on)."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 3, 16, 16, generator=gen), torch.randint(0, 3, (96,), generator=gen)
    store = relu_tanh.RunStore(tmp_path)
    quiet = lambda *a: None    # noqa: E731
    short = relu_tanh.Settings(batch_size=32, max_epochs=3, extra_epochs=0, target=0.0)
    long = relu_tanh.Settings(batch_size=32, max_epochs=5, extra_epochs=0, target=0.0)
    whole = relu_tanh.train_run(x, y, "relu", 0.01, 0, long, 5)

    def stop_after_2(activation, lr, seed, epoch, error):
        if epoch == 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):         # cap 3, interrupted after epoch 2 (its partial kept)
        relu_tanh._main_run(x, y, "relu", 0.01, 0, short, store, "cpu", quiet, stop_after_2)
    seen = []
    run = relu_tanh._main_run(x, y, "relu", 0.01, 0, long, store, "cpu", quiet, lambda *a: seen.append(a[3]))
    assert seen == [2, 3, 4, 5] and run["errors"] == whole["errors"]     # epoch 1 from the file, on to cap 5
    assert not list(tmp_path.glob("*.partial.pt"))
    # reached (target 1.0: at once) and stopped before both caps: the cap-3 run is the cap-5 run
    easy3, easy5 = (relu_tanh.Settings(batch_size=32, max_epochs=m, extra_epochs=1, target=1.0) for m in (3, 5))
    first = relu_tanh._main_run(x, y, "tanh", 0.01, 0, easy3, store, "cpu", quiet)
    assert relu_tanh.run_epochs(first) == 2
    seen = []
    again = relu_tanh._main_run(x, y, "tanh", 0.01, 0, easy5, store, "cpu", quiet, lambda *a: seen.append(a[3]))
    assert seen == [] and again["errors"] == first["errors"]
    assert store.path("run", "tanh", 0.01, 0, 5).is_file()
    # ended at its cap without reaching the target: not the same run under a larger cap
    assert store.same_run_other_cap(store.path("run", "relu", 0.01, 0, 8),
                                    relu_tanh.Settings(batch_size=32, max_epochs=8, extra_epochs=0, target=0.0)) is None


def test_the_cli_names_the_same_nets_as_the_experiment():
    from alexnet.analysis import commands
    assert commands.NETS == relu_tanh.NETS


# ----------------------------------------------------------------------------- exact k-NN

@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_streaming_knn_equals_brute_force(metric, chunk):
    rng = np.random.default_rng(0)
    db = rng.standard_normal((203, 48)).astype(np.float32)
    q = rng.standard_normal((5, 48)).astype(np.float32)
    q[0] = db[17]                                  # a query that is in the database: distance 0
    d, i = neighbors.knn_search(q, db, k=6, metric=metric, chunk_size=chunk)
    d_ref, i_ref = neighbors.brute_force_knn(q, db, k=6, metric=metric)
    np.testing.assert_array_equal(i, i_ref)
    np.testing.assert_allclose(d, d_ref, rtol=1e-9, atol=1e-9)
    assert i[0, 0] == 17 and d[0, 0] == pytest.approx(0.0, abs=1e-6)


def test_knn_reads_a_memory_mapped_npy_and_breaks_ties_by_index(tmp_path):
    rng = np.random.default_rng(1)
    db = rng.standard_normal((50, 8)).astype(np.float32)
    db[30] = db[10]                                # exact duplicate: equal distances
    np.save(tmp_path / "f.npy", db)
    mm = np.load(tmp_path / "f.npy", mmap_mode="r")
    d, i = neighbors.knn_search(db[10:11], mm, k=3, chunk_size=8)
    assert list(i[0, :2]) == [10, 30]
    d_ref, i_ref = neighbors.brute_force_knn(db[10:11], db, k=3)
    np.testing.assert_array_equal(i, i_ref)
    # fewer rows than k: all of them, sorted
    d, i = neighbors.knn_search(db[:1], db[:4], k=10)
    assert i.shape == (1, 4) and np.all(np.diff(d[0]) >= 0)


def test_knn_memory_bound_formula():
    # chunk x D x 8 (float64 chunk) + Q x (chunk + k) x 16 + Q x D x 8, written out for the paper's case
    assert neighbors.memory_bound_bytes(4096, 4096, 1, 6) == 4096 * 4096 * 8 + (4096 + 6) * 16 + 4096 * 8
    with pytest.raises(UserError):
        neighbors.knn_search(np.zeros((1, 3)), np.zeros((4, 3)), metric="manhattan")
    with pytest.raises(UserError):
        neighbors.knn_search(np.zeros((1, 3)), np.zeros((4, 5)))


# ----------------------------------------------------------------------------- Figure 3 grid

@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("channels", [3, 1])
def test_filter_grid_geometry_for_every_model(name, channels):
    model = build_model(name, num_classes=10, in_channels=channels)
    conv1 = filters.conv1_weight(model)
    conv2 = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][1]
    n, c, k, _ = conv1.shape
    towers = filters.tower_count(model)
    assert towers == conv2.groups                  # the paper models: 2, alexnet_owt: 1
    image, layout = filters.filter_grid(conv1, towers)
    cols = min(16, n // towers)
    rows = math.ceil(n // towers / cols)
    scale = max(1, 44 // k)
    cell = k * scale + 2
    height = towers * (rows * cell + 2) + (towers - 1) * filters.BLOCK_GAP
    assert image.shape[:2] == (height, cols * cell + 2)
    assert image.ndim == (3 if channels == 3 else 2)
    if name == "alexnet" and channels == 3:        # the paper's Figure 3: two blocks of 3 x 16 kernels
        assert (towers, rows, cols, k) == (2, 3, 16, 11)
    # every kernel is drawn where the layout says, normalised to the full 0..255 range
    norm = filters.normalise_kernels(conv1.numpy())
    for idx in sorted({0, n // towers - 1, n - 1}):
        y, x = layout.origin(idx)
        tile = image[y:y + k * scale:scale, x:x + k * scale:scale]
        expect = (norm[idx].transpose(1, 2, 0) * 255).round().astype(np.uint8)
        np.testing.assert_array_equal(tile if channels == 3 else tile[..., None], expect)
    # the white gap between the towers' blocks really is empty
    if towers == 2:
        gap_top = layout.block_height
        assert (image[gap_top:gap_top + filters.BLOCK_GAP] == filters.BACKGROUND).all()


def test_smoothness_separates_random_from_smooth_kernels():
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((96, 3, 11, 11))
    yy, xx = np.mgrid[0:11, 0:11]
    smooth = np.stack([np.stack([np.cos(0.4 * (xx * np.cos(t) + yy * np.sin(t)))] * 3) for t in np.linspace(0, 3, 96)])
    assert abs(filters.kernel_smoothness(noise)) < 0.05
    assert filters.kernel_smoothness(smooth) > 0.8
    assert filters.weight_correlation(noise, noise) == pytest.approx(1.0)
    stats = filters.change_statistics(torch.tensor(noise + 0.5 * smooth), torch.tensor(noise))
    assert stats["update_smoothness"] > 0.8 and stats["correlation_with_init"] < 1.0


def test_initial_conv1_recreates_a_seeded_build_and_keeps_the_global_rng():
    torch.manual_seed(3)
    expected = filters.conv1_weight(build_model("alexnet_small", num_classes=10))
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    again = filters.initial_conv1("alexnet_small", 10, 3, {}, seed=3)
    assert torch.equal(again, expected)
    assert torch.equal(torch.random.get_rng_state(), before)


# ----------------------------------------------------------------------------- Figure 4 left

def test_prediction_panel_writes_a_png(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 40, 3), dtype=np.uint8), rng.integers(0, 256, (28, 28, 1), dtype=np.uint8),
              rng.integers(0, 256, (32, 32), dtype=np.uint8)]
    names = [["cat", "dog", "ship", "car", "frog"], ["a", "b"], ["x", "y", "z", "w", "v"]]
    probs = [[0.5, 0.2, 0.1, 0.1, 0.05], [0.9, 0.1], [0.3, 0.3, 0.2, 0.1, 0.1]]
    out = prediction_panel(images, names, probs, ["dog", None, "not-in-top5"], tmp_path / "panel.png", per_row=2)
    with Image.open(out) as im:
        im.load()
        assert im.format == "PNG" and im.width > 200 and im.height > 200
    with pytest.raises(ValueError):
        prediction_panel(images, names[:2], probs, None, tmp_path / "bad.png")


# ----------------------------------------------------------------------------- ablation table

def test_ablation_summary_rows_and_deltas():
    runs = [{"arm": "baseline", "seed": s, "top1_err": e1, "top5_err": e5}
            for s, (e1, e5) in enumerate([(0.30, 0.10), (0.32, 0.12)])]
    runs += [{"arm": "no_lrn", "seed": s, "top1_err": e1, "top5_err": e5}
             for s, (e1, e5) in enumerate([(0.33, 0.11), (0.35, 0.15)])]
    rows = ablations.summarise_arms(runs)
    assert [r["arm"] for r in rows] == ["baseline", "no_lrn"]
    no_lrn = rows[1]
    assert no_lrn["top1_err_mean"] == pytest.approx(34.0)
    assert no_lrn["top1_err_std"] == pytest.approx(np.std([33, 35], ddof=1))
    assert no_lrn["delta_top1"] == pytest.approx(3.0) and no_lrn["delta_top5"] == pytest.approx(2.0)
    assert (no_lrn["paper_delta_top1"], no_lrn["paper_delta_top5"]) == (1.4, 1.2)   # section 3.3
    md = ablations.markdown_table(rows).splitlines()
    assert len(md) == 2 + len(rows) and "+3.00" in md[-1]


def test_each_ablation_arm_changes_exactly_one_thing():
    from alexnet.train.config import load_config

    class FakeCache:
        path, size = "/nonexistent/cache", 32

    budget = ablations.Budget()
    base = load_config("cifar10", ablations.arm_overrides(ablations.ARMS[0], 0, budget, FakeCache, 28)).to_dict()
    expected = {"no_lrn": {("model", "kwargs")}, "pool_2x2": {("model", "kwargs")},
                "no_dropout": {("model", "kwargs")}, "tanh": {("model", "kwargs")}, "no_conv3": {("model", "kwargs")},
                "no_pca": {("data", "pca_std")}, "no_crop_flip": {("data", "flip"), ("data", "crop")},
                "one_gpu": {("model", "kwargs")}}
    assert {a.name for a in ablations.ARMS} == {"baseline", *expected}
    for arm in ablations.ARMS[1:]:
        cfg = load_config("cifar10", ablations.arm_overrides(arm, 0, budget, FakeCache, 28)).to_dict()
        diff = {(sec, key) for sec, values in cfg.items() if isinstance(values, dict)
                for key in values if values[key] != base[sec][key]}
        assert diff == expected[arm.name], arm.name
    # the paper's numbers beside each arm
    paper = {a.name: (a.paper_top1, a.paper_top5) for a in ablations.ARMS}
    assert paper["no_lrn"] == (1.4, 1.2) and paper["pool_2x2"] == (0.4, 0.3)
    assert paper["no_pca"][0] == 1.0 and paper["no_conv3"][0] == 2.0


def test_one_reuse_rule_names_the_first_difference(tmp_path):
    from alexnet.analysis.common import differences, read_settings, reusable

    have = {"train": {"epochs": 2, "seed": 0}, "model": {"name": "alexnet"}}
    assert differences(have, have) == []
    assert differences(have, {"train": {"epochs": 3, "seed": 0}, "model": {"name": "alexnet"}, "x": 1}) == \
        ["train.epochs: 2 there, 3 here", "x: None there, 1 here"]
    assert reusable(None, have, tmp_path) is False            # nothing stored: train it
    assert reusable(have, have, tmp_path) is True
    with pytest.raises(UserError, match=r"other settings \(train.seed: 0 there, 1 here\); use another --out"):
        reusable(have, {"train": {"epochs": 2, "seed": 1}, "model": {"name": "alexnet"}}, tmp_path)
    (tmp_path / "cut.json").write_text('{"settings": {"a": 1')      # cut off while written
    assert read_settings(tmp_path / "cut.json", "settings") is None
    assert read_settings(tmp_path / "absent.json") is None


# ----------------------------------------------------------------------------- overfitting (section 4)

def test_overfitting_measures_from_hand_made_curves(tmp_path):
    # validation error lowest at epoch 3 (0.40), then up to 0.47: turned up at epoch 3, rose 7 points;
    # training error down to 0.05: a 42-point gap
    # validation loss lowest at epoch 2 (1.4), ending at 1.9: 0.5 nats above it
    lines = [{"epoch": 1, "train_top1_err": 0.8, "val_top1_err": 0.7, "val_loss": 2.0},
             {"epoch": 2, "train_top1_err": 0.5, "val_top1_err": 0.5, "val_loss": 1.4},
             {"epoch": 3, "train_top1_err": 0.3, "val_top1_err": 0.40, "val_loss": 1.5},
             {"epoch": 4, "train_top1_err": 0.1, "val_top1_err": 0.44, "val_loss": 1.7},
             {"epoch": 5, "train_top1_err": 0.05, "val_top1_err": 0.47, "val_loss": 1.9},
             {"epoch": 6, "train_top1_err": 0.04}]                      # no validation: left out
    (tmp_path / "epochs.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    curves = overfitting.run_curves(tmp_path)
    assert curves["epochs"] == [1, 2, 3, 4, 5]
    m = overfitting.overfitting_measures(curves)
    assert m["final_val_err"] == 0.47 and m["final_train_err"] == 0.05 and m["gap"] == pytest.approx(0.42)
    assert m["best_val_epoch"] == 3 and m["rise_after_best"] == pytest.approx(0.07) and m["turns_up_at"] == 3
    assert m["best_val_loss_epoch"] == 2 and m["val_loss_rise"] == pytest.approx(0.5)
    # still falling at the end: no turn-up; a rise below the threshold does not count either
    flat = overfitting.overfitting_measures({"epochs": [1, 2, 3], "train_err": [0.6, 0.5, 0.4],
                                             "val_err": [0.6, 0.55, 0.553]})
    assert flat["best_val_epoch"] == 2 and flat["turns_up_at"] is None
    assert flat["best_val_loss_epoch"] is None and flat["val_loss_rise"] is None        # no loss logged
    rows = overfitting.summarise_overfitting([{"arm": "a", "seed": 0, **m}, {"arm": "a", "seed": 1, **flat}])
    assert rows[0]["gap_mean"] == pytest.approx((42 + 15.3) / 2) and rows[0]["turns_up_at"] == [3, None]
    table = overfitting.overfitting_markdown(rows)
    assert "| a | 2 |" in table and "3, no" in table and "| 2, - | 0.50 |" in table

import copy
import io

import pytest
import torch

from sltestbed.data import VQACollator, build_tokenizer, make_digits_vqa
from sltestbed.model import TinyLlava, preset
from sltestbed.averaging import fedavg
from sltestbed.roles import ClientRole, ServerRole
from sltestbed.trainer import BatchCursor
from sltestbed.trainer import MODULE_GROUPS, OptimConfig, Stage, TensorData, train_stage

BATCH, LR, SEED = 32, 3e-3, 5


@pytest.fixture(scope="module")
def data():
    ds = make_digits_vqa(image_size=8).select(range(200))
    return TensorData(ds, VQACollator(build_tokenizer([ds])))


def new_model(data, **changes):
    torch.manual_seed(0)
    return TinyLlava(preset("tiny", vocab_size=int(data.labels.max()) + 10, **changes))


def split_step(client, server, labels="server"):
    acts, batch_labels = client.forward()
    logits = server.forward([acts])
    if labels == "server":
        _, grads = server.backward_from_labels([batch_labels])
    else:
        _, dlogits = client.loss_and_grad(logits[0])
        grads = server.backward_from_output_grads([dlogits])
    client.backward(grads[0])


def roles(model, data, steps, cut=0, **server_options):
    optim = OptimConfig(LR, steps)
    return (ClientRole(model, cut, data, batch_size=BATCH, seed=SEED, optim=optim),
            ServerRole(model, cut, optim=optim, **server_options))


def max_diff(a, b):
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("cut", [0, 1])
def test_split_roles_train_exactly_like_the_centralized_trainer(data, cut):
    reference = new_model(data)
    split = copy.deepcopy(reference)
    steps = -(-len(data) // BATCH)
    train_stage(reference, reference, data, Stage("full", MODULE_GROUPS, 1, LR), BATCH, SEED, progress=False)
    client, server = roles(split, data, steps, cut)
    for _ in range(steps):
        split_step(client, server)
    assert max_diff(reference, split) <= 1e-4
    assert max_diff(reference, new_model(data)) > 1e-3  # and training did move the weights


def test_labels_on_the_client_give_the_same_training(data):
    a, b = new_model(data), new_model(data)
    ca, sa = roles(a, data, 4)
    cb, sb = roles(b, data, 4)
    for _ in range(4):
        split_step(ca, sa, "server")
        split_step(cb, sb, "client")
    assert max_diff(a, b) <= 1e-5


def test_the_u_shaped_split_trains_like_the_centralized_trainer(data):
    """The head on the client: the server sends its hidden state, the client's head and loss
    give the gradient back; one step each, the same weights as one optimizer over it all."""
    reference = new_model(data)
    split = copy.deepcopy(reference)
    steps = -(-len(data) // BATCH)
    train_stage(reference, reference, data, Stage("full", MODULE_GROUPS, 1, LR), BATCH, SEED, progress=False)
    optim = OptimConfig(LR, steps)
    client = ClientRole(split, 0, data, batch_size=BATCH, seed=SEED, optim=optim, head=True)
    server = ServerRole(split, 0, optim=optim, head=False)
    for _ in range(steps):
        acts, _ = client.forward()
        hidden = server.forward([acts])
        assert hidden[0].shape[-1] == split.lm_hidden  # not logits: the head is on the client
        _, dhidden = client.loss_and_grad(hidden[0])
        client.backward(server.backward_from_output_grads([dhidden])[0])
    assert max_diff(reference, split) <= 1e-4
    assert set(client.part_state()) - set(client.part.state_dict()) == {"head.head.weight"}


def test_client_state_restores_mid_step(data):
    a, b = new_model(data, quantizer="learned", bits=2), new_model(data, quantizer="learned", bits=2)
    ca, sa = roles(a, data, 10)
    cb, sb = roles(b, data, 10)
    for _ in range(3):
        split_step(ca, sa)
        split_step(cb, sb)
    # a forward is pending on b's client when its state is saved and restored into a fresh role
    acts, batch_labels = cb.forward()
    saved = cb.state_bytes()
    fresh, _ = roles(new_model(data, quantizer="learned", bits=2), data, 10)
    fresh.part.load_state_dict(cb.part.state_dict())
    fresh.load_state_bytes(saved)
    sb.forward([acts])
    _, grads = sb.backward_from_labels([batch_labels])
    fresh.backward(grads[0])
    split_step(ca, sa)
    assert max((p - q).abs().max().item() for p, q in zip(ca.part.parameters(), fresh.part.parameters())) <= 1e-6
    assert fresh.steps == ca.steps == 4


def test_compressed_gradients_go_down(data):
    model = new_model(data)
    client, server = roles(model, data, 2, grad_scheme="uniform", grad_bits=8)
    acts, batch_labels = client.forward()
    server.forward([acts])
    _, grads = server.backward_from_labels([batch_labels])
    assert grads[0]["image"].scheme == "uniform" and grads[0]["image"].bits == 8
    client.backward(grads[0])
    with pytest.raises(ValueError, match="gradient quantizer 'learned' not allowed"):
        ServerRole(model, 0, optim=OptimConfig(LR, 1), grad_scheme="learned", grad_bits=2)


def test_batch_cursor_matches_tensor_data_order(data):
    cursor = BatchCursor(len(data), BATCH, SEED)
    g = torch.Generator().manual_seed(SEED)
    for _ in range(2):  # two epochs
        order = torch.randperm(len(data), generator=g)
        for start in range(0, len(data), BATCH):
            assert torch.equal(cursor.next(), order[start : start + BATCH])


def test_fedavg_weights():
    a = {"w": torch.tensor([0.0, 2.0])}
    b = {"w": torch.tensor([4.0, 6.0])}
    assert torch.equal(fedavg([a, b], [1, 3])["w"], torch.tensor([3.0, 5.0]))
    with pytest.raises(ValueError):
        fedavg([], [])


def test_client_state_holds_what_trains_only(data):
    """The node state saved after every message is bounded by the trainable tensors: a frozen
    tower is not in it, and a role built from the same base restores from it exactly."""
    model = new_model(data, quantizer="learned", bits=2)
    client = ClientRole(model, 0, data, batch_size=16, seed=0, optim=OptimConfig(1e-3, 10),
                        trainable=("connector", "quantizers"))
    server = ServerRole(new_model(data, quantizer="learned", bits=2), 0, optim=OptimConfig(1e-3, 10))
    for _ in range(2):
        split_step(client, server)
    state = client.trainable_state()
    assert not any(k.startswith(("vision.", "embed_tokens.")) for k in state)
    assert {k for k in state if k.startswith("connector.")} == {k for k, _ in client.part.connector.named_parameters(prefix="connector")}
    trainable = {n: p for n, p in client.part.named_parameters() if p.requires_grad}
    saved = client.state_bytes()
    kept = torch.load(io.BytesIO(saved), weights_only=False)["part"]
    assert set(kept) == set(trainable)  # the tiny model has no buffers
    assert sum(v.numel() for v in kept.values()) == sum(p.numel() for p in trainable.values()) < \
        sum(v.numel() for v in client.part.state_dict().values()) / 5
    fresh = ClientRole(new_model(data, quantizer="learned", bits=2), 0, data, batch_size=16, seed=0,
                       optim=OptimConfig(1e-3, 10), trainable=("connector", "quantizers"))
    fresh.load_state_bytes(saved)
    for name, tensor in client.part.state_dict().items():
        assert torch.equal(fresh.part.state_dict()[name], tensor), name
    with pytest.raises(ValueError, match="does not train"):
        fresh.load_trainable_state({"vision.model.embeddings.patch_embedding.weight": torch.zeros(1)})


def test_the_state_benchmark_runs_and_the_bounded_state_is_smaller(capsys):
    from sltestbed import state_bench

    assert state_bench.main(["--presets", "tiny", "--repeats", "1"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    by = {r[1]: (float(r[3]), float(r[4])) for r in rows}  # trains -> (state MB, whole-part MB)
    assert set(by) == {"all", "default", "lora"}
    assert by["default"][0] < by["default"][1] and by["lora"][0] <= by["default"][0]

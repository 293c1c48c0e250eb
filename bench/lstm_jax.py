"""lstm_jax.py - JAX side of bench/lstm.lua: one training step of the same LSTM (or GRU)
regressor, x (batch, 100, 8) -> LSTM(8, units) over all steps (jax.lax.scan; Keras layout and
gate order i, f, g, o, as moongrad's nn.LSTMCell; a GRU: z, r, h with reset_after and the
(2, 3u) bias, as nn.GRUCell) -> Dense(units, 1) on every step -> MSE against
y (batch, 100, 1) -> gradients (jax.value_and_grad) -> Adam (lr 1e-3, written out: JAX has no
optimizer of its own), the whole step one jax.jit with the parameters and the optimizer's
state donated, float32, from the data and initial weights that lstm.lua saved in DIR.
Before timing, the loss and the parameter gradients are checked against the float64
reference lstm.lua saved (within benchlib.REF_TOL, 1e-5, of the scale of their terms:
benchlib.ref_err). Compilation is not timed (the warm-up call compiles). After the timing,
the peak RSS once 200 steps in all have run.
Usage: $(bench/venv)/bin/python bench/lstm_jax.py DIR [case ...]   (after bench/lstm.lua DIR;
cases as lstm.lua's: units, or kind:units:batch)
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as B  # noqa: E402

B.xla_flags()
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

BENCH = "lstm"
USAGE = B.lstm_usage("$(bench/venv)/bin/python bench/lstm_jax.py")
RSS_STEPS, RSS_CASE = B.LSTM_RSS_STEPS, B.LSTM_RSS_CASE


def names(kind):
    return (kind + "_kernel", kind + "_recurrent_kernel", kind + "_bias", "dense_kernel", "dense_bias")


def lstm_scan(K, R, b, xs):
    u = R.shape[0]

    def cell(carry, xt):
        h, c = carry
        z = xt @ K + h @ R + b
        i, f = jax.nn.sigmoid(z[:, :u]), jax.nn.sigmoid(z[:, u:2 * u])
        g, o = jnp.tanh(z[:, 2 * u:3 * u]), jax.nn.sigmoid(z[:, 3 * u:])
        c = f * c + i * g
        h = o * jnp.tanh(c)
        return (h, c), h

    zeros = jnp.zeros((xs.shape[1], u), xs.dtype)
    return jax.lax.scan(cell, (zeros, zeros), xs)[1]


def gru_scan(K, R, b, xs):
    u = R.shape[0]

    def cell(h, xt):
        mx, mh = xt @ K + b[0], h @ R + b[1]
        z = jax.nn.sigmoid(mx[:, :u] + mh[:, :u])
        r = jax.nn.sigmoid(mx[:, u:2 * u] + mh[:, u:2 * u])
        hh = jnp.tanh(mx[:, 2 * u:] + r * mh[:, 2 * u:])
        h = z * h + (1 - z) * hh
        return h, h

    return jax.lax.scan(cell, jnp.zeros((xs.shape[1], u), xs.dtype), xs)[1]


def loss_fn(params, x, y, kind):
    K, R, b, Wd, bd = params
    hs = (lstm_scan if kind == "lstm" else gru_scan)(K, R, b, jnp.swapaxes(x, 0, 1))   # (T, B, u)
    pred = jnp.swapaxes(hs, 0, 1) @ Wd + bd
    return jnp.mean((pred - y) ** 2)


def adam(lr=1e-3, b1=0.9, b2=0.999, eps=1e-7):
    def init(params):
        return (jnp.zeros((), jnp.int32), [jnp.zeros_like(p) for p in params],
                [jnp.zeros_like(p) for p in params])

    def update(params, grads, state):
        t, ms, vs = state
        t = t + 1
        ms = [b1 * m + (1 - b1) * g for m, g in zip(ms, grads)]
        vs = [b2 * v + (1 - b2) * g * g for v, g in zip(vs, grads)]
        tf = t.astype(jnp.float32)
        step = lr * jnp.sqrt(1 - b2 ** tf) / (1 - b1 ** tf)
        params = [p - step * m / (jnp.sqrt(v) + eps) for p, m, v in zip(params, ms, vs)]
        return params, (t, ms, vs)
    return init, update


def main():
    directory = B.data_dir("lstm_jax.py", USAGE)
    cases = B.lstm_cases("lstm_jax.py", USAGE)
    B.jax_meta(BENCH, jax)
    B.settle()
    opt_init, opt_update = adam()

    loss_and_grads = jax.jit(jax.value_and_grad(loss_fn), static_argnums=(3,))

    def step(params, state, x, y, kind):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y, kind)
        params, state = opt_update(params, grads, state)
        return params, state, loss
    train_step = jax.jit(step, donate_argnums=(0, 1), static_argnums=(4,))

    failed = []
    for kind, _, _, label, key in cases:
        def load(name):
            return B.load_array("lstm_jax.py", directory, "%s_%s.npy" % (key, name))
        x, y = jnp.asarray(load("x")), jnp.asarray(load("y"))
        params = [jnp.asarray(load(n)) for n in names(kind)]
        loss, grads = loss_and_grads(params, x, y, kind)
        def ref(name):
            return B.reference("lstm_jax.py", directory, key + "_", name)
        errs = {"loss": B.ref_err(loss, ref("loss"))}
        for n, g in zip(names(kind), grads):
            errs["grad " + n] = B.ref_err(g, ref("grad_" + n))
        B.check_errors(BENCH, label, errs, failed)
        state = [params, opt_init(params)]

        def one():
            state[0], state[1], loss = train_step(state[0], state[1], x, y, kind)
            return loss.block_until_ready()
        name = "jit(value_and_grad + Adam), lax.scan"
        m = B.measure(one, reps=7, min_time=0.2)
        B.result(BENCH, label, name, m)
        B.log("%s case %-12s %-36s %9.3f ms CPU, %9.3f ms wall", B.peer(), label, name,
              m["cpu"] * 1e3, m["wall"] * 1e3)
        if label != RSS_CASE:
            continue
        for _ in range(max(0, RSS_STEPS - m["calls"])):
            one()
        rss = B.peak_rss_mib()
        if rss is not None:
            B.meta(BENCH, "peak_rss_mib_peer %s" % label, "%.1f" % rss)
            B.log("%s case %-12s peak RSS after %d steps: %.1f MiB", B.peer(), label,
                  max(RSS_STEPS, m["calls"]), rss)
    B.exit_if_failed("lstm_jax.py", failed, "the float64 reference")


if __name__ == "__main__":
    main()

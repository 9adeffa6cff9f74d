# %% [markdown]
# # A PyTorch module compiled, checked, timed and deployed from Python
#
# Notebook-style (`# %%` cells: Jupyter, VS Code), or `python examples/compile_a_module.py`.
# Everything runs on this machine: the default device is this CPU behind an embedded TVM RPC
# tracker. Give `tracker="HOST:9190", key="snapdragon820"` and `target_name="arm"` to use a
# phone.

# %%
import numpy as np
import torch

import tvmshuffle


class Unit(torch.nn.Module):
    """A ShuffleNet unit's idioms: grouped 1x1 convolution, channel shuffle, depthwise 3x3."""

    def __init__(self, groups: int = 3, channels: int = 24):
        super().__init__()
        self.groups = groups
        self.stem = torch.nn.Conv2d(3, channels, 3, stride=2, padding=1)
        self.expand = torch.nn.Conv2d(channels, channels, 1, groups=groups)
        self.depthwise = torch.nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.head = torch.nn.Linear(channels, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = self.expand(x)
        b, c, h, w = y.shape
        y = y.reshape(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w)
        y = torch.relu(self.depthwise(y) + x)
        return self.head(y.mean((2, 3)))


net = Unit().eval()

# %% [markdown]
# Three lines: import (torch.export at 224x224), compile (the shipped and your own tuning
# records for this CPU where they exist, schedules derived from the CPU elsewhere), run.

# %%
model = tvmshuffle.load(net, input_size=(224, 224))
lib = tvmshuffle.compile(model)
x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype("float32")
y = lib.run(x)
expected = net(torch.from_numpy(x)).detach().numpy()
print("largest difference from PyTorch:", np.abs(y - expected).max())

# %%
print("which schedule each kernel got:", lib.manifest["tuning"]["schedules"])
result = lib.benchmark(repeat=20)
print(f"median {result.latency.median_ms:.3f} ms on 1 thread")

# %% [markdown]
# Keep it, deploy it (here: the embedded device), tune it (a tiny budget; records go to your
# user database, `~/.local/share/tvmshuffle/schedules/`, and the next compile applies them).

# %%
saved = lib.save("unit_artifact")
print(tvmshuffle.deploy(saved, repeat=5)["latency_ms"])
summary = tvmshuffle.tune(model, trials=8)
for task in summary["tasks"]:
    print(task["name"], task["kind"], "trials run:", task["trials_run"])
retuned = tvmshuffle.compile(model).benchmark(repeat=20).latency
print(f"compiled again with them: median {retuned.median_ms:.3f} ms")

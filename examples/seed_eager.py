"""The seed example, run eagerly: swap `import torch` for `import tracegrad as torch`.

A custom autograd.Function (a clipped ReLU whose hand-written backward is the one used), an
nn.Module built from nn.Linear, trained with nn.MSELoss and optim.SGD in a
zero_grad / backward / step loop over a DataLoader. Prints the loss as it falls.
"""

import tracegrad as torch
from tracegrad import nn, optim
from tracegrad.data import DataLoader, TensorDataset


class ClippedReLU(torch.autograd.Function):
    """min(max(x, 0), 6), with the gradient passed only where 0 < x < 6."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(0.0, 6.0)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return grad_output * ((x > 0) & (x < 6))


class Regressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(4, 32)
        self.out = nn.Linear(32, 1)

    def forward(self, x):
        return self.out(ClippedReLU.apply(self.hidden(x)))


def main(epochs: int = 40) -> float:
    torch.manual_seed(0)
    inputs = torch.randn(512, 4)
    targets = (inputs @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])).tanh()
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=32, shuffle=True)
    model = Regressor()
    loss_fn = nn.MSELoss()
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for epoch in range(epochs):
        total = 0.0
        for x, y in loader:
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            total += loss.item() * len(x)
        if epoch % 10 == 0 or epoch == epochs - 1:
            print(f"epoch {epoch:3d}  mean squared error {total / len(inputs):.5f}")
    return total / len(inputs)


if __name__ == "__main__":
    main()

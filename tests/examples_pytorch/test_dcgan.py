"""Port of pytorch/examples dcgan/main.py: its Generator (transposed convolutions, BatchNorm2d,
ReLU, Tanh) and Discriminator (strided convolutions, BatchNorm2d, LeakyReLU, Sigmoid), the
custom weights_init, BCELoss and two Adam optimizers, trained by the body of the example's
loop (a discriminator update on real and fake images, then a generator update), run eagerly,
as compiled modules, as a compiled whole step and in PyTorch. The architecture is the example's
(64 x 64 images); the widths are shrunk. The noise the example draws with torch.randn comes
with each batch instead (the libraries' generators differ)."""

import numpy as np
from harness import run_port

nz, ngf, ndf, nc = 8, 4, 4, 3  # the example's sizes are 100, 64, 64, 3
lr, beta1 = 0.0002, 0.5


def make(lib):
    torch, nn, optim = lib, lib.nn, lib.optim

    # custom weights initialization called on netG and netD
    def weights_init(m):
        classname = m.__class__.__name__
        if classname.find("Conv") != -1:
            torch.nn.init.normal_(m.weight, 0.0, 0.02)
        elif classname.find("BatchNorm") != -1:
            torch.nn.init.normal_(m.weight, 1.0, 0.02)
            torch.nn.init.zeros_(m.bias)

    class Generator(nn.Module):
        def __init__(self, ngpu):
            super().__init__()
            self.ngpu = ngpu
            self.main = nn.Sequential(
                # input is Z, going into a convolution
                nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False),
                nn.BatchNorm2d(ngf * 8),
                nn.ReLU(True),
                # state size. (ngf*8) x 4 x 4
                nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ngf * 4),
                nn.ReLU(True),
                # state size. (ngf*4) x 8 x 8
                nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ngf * 2),
                nn.ReLU(True),
                # state size. (ngf*2) x 16 x 16
                nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ngf),
                nn.ReLU(True),
                # state size. (ngf) x 32 x 32
                nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False),
                nn.Tanh(),
                # state size. (nc) x 64 x 64
            )

        def forward(self, input):
            if (input.is_cuda or input.is_xpu) and self.ngpu > 1:
                output = nn.parallel.data_parallel(self.main, input, range(self.ngpu))
            else:
                output = self.main(input)
            return output

    class Discriminator(nn.Module):
        def __init__(self, ngpu):
            super().__init__()
            self.ngpu = ngpu
            self.main = nn.Sequential(
                # input is (nc) x 64 x 64
                nn.Conv2d(nc, ndf, 4, 2, 1, bias=False),
                nn.LeakyReLU(0.2, inplace=True),
                # state size. (ndf) x 32 x 32
                nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ndf * 2),
                nn.LeakyReLU(0.2, inplace=True),
                # state size. (ndf*2) x 16 x 16
                nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ndf * 4),
                nn.LeakyReLU(0.2, inplace=True),
                # state size. (ndf*4) x 8 x 8
                nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ndf * 8),
                nn.LeakyReLU(0.2, inplace=True),
                # state size. (ndf*8) x 4 x 4
                nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False),
                nn.Sigmoid(),
            )

        def forward(self, input):
            if (input.is_cuda or input.is_xpu) and self.ngpu > 1:
                output = nn.parallel.data_parallel(self.main, input, range(self.ngpu))
            else:
                output = self.main(input)

            return output.view(-1, 1).squeeze(1)

    netG = Generator(1)
    netG.apply(weights_init)
    netD = Discriminator(1)
    netD.apply(weights_init)
    criterion = nn.BCELoss()
    optimizerD = optim.Adam(netD.parameters(), lr=lr, betas=(beta1, 0.999))
    optimizerG = optim.Adam(netG.parameters(), lr=lr, betas=(beta1, 0.999))
    return {
        "netG": netG,
        "netD": netD,
        "criterion": criterion,
        "optimizerD": optimizerD,
        "optimizerG": optimizerG,
    }


def step(lib, state, real_cpu, noise):
    """One pass of the example's inner loop; returns errD + errG."""
    torch = lib
    netG, netD, criterion = state["netG"], state["netD"], state["criterion"]
    optimizerD, optimizerG = state["optimizerD"], state["optimizerG"]
    real_label, fake_label = 1, 0
    ############################
    # (1) Update D network: maximize log(D(x)) + log(1 - D(G(z)))
    ###########################
    # train with real
    netD.zero_grad()
    batch_size = real_cpu.size(0)
    label = torch.full((batch_size,), real_label, dtype=real_cpu.dtype)

    output = netD(real_cpu)
    errD_real = criterion(output, label)
    errD_real.backward()

    # train with fake
    fake = netG(noise)
    label.fill_(fake_label)
    output = netD(fake.detach())
    errD_fake = criterion(output, label)
    errD_fake.backward()
    errD = errD_real + errD_fake
    optimizerD.step()

    ############################
    # (2) Update G network: maximize log(D(G(z)))
    ###########################
    netG.zero_grad()
    label.fill_(real_label)  # fake labels are real for generator cost
    output = netD(fake)
    errG = criterion(output, label)
    errG.backward()
    optimizerG.step()
    return errD + errG


def batches(count=3, size=4, seed=0):
    rng = np.random.default_rng(seed)
    return [
        (
            rng.uniform(-1, 1, (size, nc, 64, 64)).astype(np.float32),
            rng.standard_normal((size, nz, 1, 1)).astype(np.float32),
        )
        for _ in range(count)
    ]


def test_dcgan_matches_torch_eager_and_compiled():
    runs = run_port(make, step, batches())
    states = runs["eager"].states
    # the running statistics moved: BatchNorm trained in train mode in both networks
    assert states["netD"]["main.3.num_batches_tracked"] == 9
    assert states["netG"]["main.1.num_batches_tracked"] == 3

import torch
import torch.nn as nn

from datafree.synth import BNStatHooks, batch_moments, bn_loss, gaussian_kl


def _net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.BatchNorm2d(5))
    for m in net:
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return net.eval()


def test_hooks_match_direct_statistics():
    net = _net()
    x = torch.randn(6, 3, 10, 10)
    with BNStatHooks(net) as h:
        net(x)
    a = net[0](x)  # input of the first BN
    b = net[3](net[2](net[1](a)))  # input of the second BN
    for i, t in enumerate((a, b)):
        direct_mean = t.permute(1, 0, 2, 3).reshape(t.shape[1], -1).mean(1)
        direct_var = t.permute(1, 0, 2, 3).reshape(t.shape[1], -1).var(1, unbiased=False)
        torch.testing.assert_close(h.means[i], direct_mean)
        torch.testing.assert_close(h.vars[i], direct_var)
    assert len(h._handles) == 0  # removed on exit


def test_kl_matches_closed_form_of_torch_distributions():
    torch.manual_seed(1)
    mu_hat, mu = torch.randn(7), torch.randn(7)
    var_hat, var = torch.rand(7) + 0.1, torch.rand(7) + 0.1
    eps = 1e-5
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(mu_hat, (var_hat + eps).sqrt()),
                                            torch.distributions.Normal(mu, (var + eps).sqrt()))
    torch.testing.assert_close(gaussian_kl(mu_hat, var_hat, mu, var, eps), ref)
    assert torch.allclose(gaussian_kl(mu, var, mu, var, eps), torch.zeros(7), atol=1e-7)


def test_bn_loss_forms_on_known_values():
    net = _net()
    x = torch.randn(8, 3, 10, 10)
    with BNStatHooks(net) as h:
        net(x)
        total, per = bn_loss(h, "kl")
        l2, per2 = bn_loss(h, "l2")
    ref = sum(gaussian_kl(m.running_mean, m.running_var, h.means[i], h.vars[i], m.eps).mean()
              for i, (_, m) in enumerate(h.layers))
    torch.testing.assert_close(total, ref)
    m0 = h.layers[0][1]
    exp0 = torch.linalg.vector_norm(h.means[0] - m0.running_mean) + torch.linalg.vector_norm(h.vars[0] - m0.running_var)
    torch.testing.assert_close(per2[0], exp0)


def test_batch_moments_1d():
    x = torch.randn(5, 3)
    m, v = batch_moments(x)
    torch.testing.assert_close(m, x.mean(0))
    torch.testing.assert_close(v, x.var(0, unbiased=False))

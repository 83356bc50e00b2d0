# dp-accounting 0.6.0 (pip install dp-accounting==0.6.0), mpmath 1.4.1, Python 3.
import math, mpmath as mp, dp_accounting
from dp_accounting.rdp import rdp_privacy_accountant as r
mp.mp.dps = 40
settings = [(0.01, 1.1, 10000), (256/60000, 1.1, round(60/(256/60000))), (0.1, 0.8, 100), (1.0, 1.0, 1)]
ints = [2, 3, 8, 32, 64, 256]
fracs = [1.5, 2.5, 3.7, 7.3, 10.9]
def exact(q, s, a):
    if q == 1.0: return a/(2*s*s)
    f = lambda z: mp.npdf(z, 0, s)*((1-q)+q*mp.exp((2*z-1)/(2*s*s)))**a
    z0 = s*s*mp.log(1/q-1)+0.5
    return float(mp.log(mp.quad(f, [-mp.inf, -20*s, z0, z0+20*s, mp.inf]))/(a-1))
int_orders = list(range(2, 257)) + [320, 384, 512, 768, 1024]
for q, s, T in settings:
    ri = r._compute_rdp_poisson_subsampled_gaussian(q, s, ints)
    rf = r._compute_rdp_poisson_subsampled_gaussian(q, s, fracs)
    ex = [exact(q, s, a) for a in fracs]
    ev = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(s))
    acc = r.RdpAccountant(orders=int_orders); acc.compose(ev, T)
    eps_int = acc.get_epsilon_and_optimal_order(1e-5)
    acc2 = r.RdpAccountant(); acc2.compose(ev, T)
    eps_def = acc2.get_epsilon_and_optimal_order(1e-5)
    print(f"q={q!r} sigma={s} steps={T}")
    print("  int rdp", [repr(float(x)) for x in ri])
    print("  frac rdp dp_accounting", [repr(float(x)) for x in rf])
    print("  frac rdp exact quad", [repr(x) for x in ex])
    print("  eps int orders", repr(float(eps_int[0])), eps_int[1])
    print("  eps default orders", repr(float(eps_def[0])), eps_def[1])

#include "attention_prob.h"

#include <cmath>
#include <map>
#include <mutex>
#include <utility>

#include "attention_internal.h"
#include "hashlab/attention.h"
#include "hashlab/common.h"

namespace hashlab {
namespace attn {
namespace {

constexpr int TABLE_INTERVALS = 4096;

// log pmf(j; n, p) for 0 < p < 1.
inline double log_pmf(int j, int n, double lp, double lq) {
  return std::lgamma(n + 1.0) - std::lgamma(j + 1.0) - std::lgamma(n - j + 1.0) + j * lp + (n - j) * lq;
}

double log_sf_impl(int m, int l, double p) {
  if (m <= 0) return 0.0;
  if (m > l || p <= 0.0) return -INFINITY;
  if (p >= 1.0) return 0.0;
  const double lp = std::log(p), lq = std::log1p(-p), ratio = p / (1.0 - p);
  // lower tail sum_{j < m} by the term recurrence from j = 0
  double lower = 0.0;
  {
    double t = std::exp(l * lq);  // pmf(0)
    for (int j = 0; j < m; ++j) {
      lower += t;
      t *= (double)(l - j) / (j + 1) * ratio;
    }
  }
  if (lower < 0.5) return std::log1p(-lower);
  // upper tail directly, relative to its first term (no cancellation, no underflow)
  const double t0 = log_pmf(m, l, lp, lq);
  double s = 0.0, t = 1.0;
  for (int j = m; j <= l; ++j) {
    s += t;
    t *= (double)(l - j) / (j + 1) * ratio;
    if (j > l * p && t < 1e-17 * s) break;
  }
  return t0 + std::log(s);
}

}  // namespace

std::shared_ptr<const LogUTableData> log_u_table(int l, int m) {
  static std::mutex mu;
  static std::map<std::pair<int, int>, std::shared_ptr<const LogUTableData>> cache;
  std::lock_guard<std::mutex> g(mu);
  auto it = cache.find({l, m});
  if (it != cache.end()) return it->second;
  auto d = std::make_shared<LogUTableData>();
  if (m > 0) {
    const int n = TABLE_INTERVALS;
    const double x_lo = std::log(1e-7 / l), h = -x_lo / n;
    d->F.resize(n + 1);
    d->dF.resize(n + 1);
    for (int i = 0; i <= n; ++i) {
      const double x = i == n ? 0.0 : x_lo + i * h, p = std::exp(x);
      const double F = log_sf_impl(m, l, p);
      // dF/dx = p * l * pmf(m - 1; l - 1, p) / u
      double dF;
      if (p >= 1.0) dF = (m == l) ? (double)l : 0.0;
      else dF = std::exp(std::log((double)l) + x + log_pmf(m - 1, l - 1, std::log(p), std::log1p(-p)) - F);
      d->F[i] = (float)F;
      d->dF[i] = (float)dF;
    }
    d->view.zero = false;
    d->view.n = n;
    d->view.x_lo = (float)x_lo;
    d->view.h = (float)h;
    d->view.inv_h = (float)(1.0 / h);
    d->view.slope_lo = (float)m;
    d->view.F = d->F.data();
    d->view.dF = d->dF.data();
  }
  cache[{l, m}] = d;
  return d;
}

}  // namespace attn

double log_binom_sf(int m, int l, double p) { return attn::log_sf_impl(m, l, p); }

void attention_sampling_prob(const float* cosv, int64_t n, int k, int l, int m, float* p, float* u) {
  check(k >= 1 && k <= 32, "k: expected 1 <= k <= 32");
  check(l >= 1, "l: expected l >= 1");
  check(m >= 0 && m <= l && m <= 255, "min_collisions: expected 0 <= min_collisions <= min(l, 255)");
  auto tab = attn::log_u_table(l, m);
  attn::kern().sampling_prob(cosv, n, k, tab->view, p, u);
}

}  // namespace hashlab

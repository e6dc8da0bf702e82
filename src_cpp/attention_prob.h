// log u = log P[Binomial(l, p) >= m], the probability that a key colliding with the query
// in a table with probability p is sampled, as the interpolation table the kernels read.
#pragma once
#include <memory>
#include <vector>

#include "kernels/attention_kernels.h"

namespace hashlab {
namespace attn {

struct LogUTableData {
  std::vector<float> F, dF;
  LogUTable view;
};

// The table of (l, m), built once per process and shared.
std::shared_ptr<const LogUTableData> log_u_table(int l, int m);

}  // namespace attn
}  // namespace hashlab

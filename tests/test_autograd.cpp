// The backward engine: accumulation, grad mode, detach, graph freeing, error messages, deep
// graphs and custom nodes recorded with autograd::record.
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <csignal>
#include <string>

#include "autograd/grad_mode.h"
#include "autograd/node.h"
#include "ops/elementwise.h"
#include "ops/reduce.h"
#include "ops/views.h"
#include "support/testing.h"

using namespace scanline;
using namespace scanline::testing;
using autograd::BackwardContext;
using Grads = std::vector<Tensor>;

namespace {

std::vector<double> map(const std::vector<double>& v, double (*f)(double)) {
  std::vector<double> out;
  for (double e : v) out.push_back(f(e));
  return out;
}

}  // namespace

TEST_CASE("a leaf reached along several paths accumulates every contribution") {
  Tensor x = random_leaf({5}, 1);
  // Diamond: h feeds both operands of one mul and an add. d/dx sum(h*h + h) = (2h + 1) h.
  Tensor h = exp(x);
  backward(sum(h * h + h));
  std::vector<double> want;
  for (double e : x.to_vector<double>()) want.push_back((2.0 * std::exp(e) + 1.0) * std::exp(e));
  check_close(x.grad(), want, 1e-12);
  // The same leaf as both operands of one op, and through a view.
  Tensor y = random_leaf({2, 3}, 2);
  backward(sum(y * y + transpose(transpose(y, 0, 1), 0, 1)));
  check_close(y.grad(), map(y.to_vector<double>(), [](double e) { return 2.0 * e + 1.0; }), 1e-12);
}

TEST_CASE("gradients add up across backward calls until zero_grad") {
  Tensor x = random_leaf({4}, 3);
  backward(sum(x * 3.0));
  check_close(x.grad(), {3, 3, 3, 3}, 0.0);
  backward(sum(x * x));
  check_close(x.grad(), map(x.to_vector<double>(), [](double e) { return 3.0 + 2.0 * e; }), 1e-15);
  x.zero_grad();
  CHECK_FALSE(x.grad().defined());
  backward(sum(x * 5.0));
  check_close(x.grad(), {5, 5, 5, 5}, 0.0);
}

TEST_CASE("the stored gradient never aliases a tensor of the graph or the caller's gradient") {
  Tensor x = random_leaf({3}, 4);
  Tensor g = from_vector<double>({1.0, 2.0, 3.0}, {3});
  backward(clone(x), g);  // clone passes the incoming gradient through unchanged
  fill_(g, 100.0);
  check_close(x.grad(), {1, 2, 3}, 0.0);
  Tensor leaf = random_leaf({3}, 5);
  backward(leaf, g);  // the root itself is the leaf
  fill_(g, -1.0);
  check_close(leaf.grad(), {100, 100, 100}, 0.0);
}

TEST_CASE("the root may be a leaf") {
  Tensor s = scalar_tensor(2.5, {.dtype = DType::f64, .requires_grad = true});
  backward(s);
  CHECK(s.grad().item<double>() == 1.0);
  backward(s);
  CHECK(s.grad().item<double>() == 2.0);
  Tensor v = random_leaf({2}, 6);
  CHECK_THROWS_WITH_AS(backward(v), doctest::Contains("backward: a gradient must be given for a non-scalar root f64[2] on cpu"), Error);
}

TEST_CASE("NoGradGuard stops recording and restores the previous mode") {
  Tensor x = random_leaf({3}, 7);
  CHECK(autograd::is_grad_enabled());
  {
    NoGradGuard outer;
    CHECK_FALSE(autograd::is_grad_enabled());
    Tensor y = x * 2.0;
    CHECK_FALSE(y.requires_grad());
    CHECK(y.is_leaf());
    CHECK_FALSE(reshape(x, {3, 1}).requires_grad());
    {
      NoGradGuard inner;
      CHECK_FALSE(autograd::is_grad_enabled());
    }
    CHECK_FALSE(autograd::is_grad_enabled());  // the inner guard restored "off", not "on"
  }
  CHECK(autograd::is_grad_enabled());
  Tensor z = x * 2.0;
  CHECK(z.requires_grad());
  REQUIRE(z.grad_fn() != nullptr);
  CHECK(z.grad_fn()->name() == "mul");
  CHECK_FALSE(z.is_leaf());
  // Backward functions run with recording off.
  bool enabled_inside = true;
  Tensor out = empty({3}, {.dtype = DType::f64});
  autograd::record("probe", {x}, {out}, [&](const BackwardContext& ctx) {
    enabled_inside = autograd::is_grad_enabled();
    return Grads{ctx.grad()};
  });
  backward(out, ones({3}, {.dtype = DType::f64}));
  CHECK_FALSE(enabled_inside);
  CHECK(autograd::is_grad_enabled());
}

TEST_CASE("detach cuts the graph") {
  Tensor x = random_leaf({4}, 8);
  Tensor d = x.detach();
  CHECK_FALSE(d.requires_grad());
  CHECK(d.is_leaf());
  CHECK(d.raw_data() == x.raw_data());
  backward(sum(d * x));  // only the second factor carries a gradient
  check_close(x.grad(), x.to_vector<double>(), 0.0);
  Tensor y = exp(x);
  CHECK_FALSE(y.detach().requires_grad());
  CHECK(y.detach().grad_fn() == nullptr);
  CHECK_THROWS_WITH_AS(backward(sum(y.detach())), doctest::Contains("backward: the tensor does not require grad"), Error);
}

TEST_CASE("a freed graph cannot be used twice unless retained") {
  Tensor x = random_leaf({3}, 9);
  Tensor y = sum(exp(x));
  backward(y);
  CHECK_THROWS_WITH_AS(backward(y), doctest::Contains("was already used and freed; pass retain_graph=true to backward twice"), Error);
  Tensor x2 = random_leaf({3}, 10);
  Tensor y2 = sum(exp(x2));
  backward(y2, Tensor(), true);
  backward(y2, Tensor(), true);
  backward(y2);
  check_close(x2.grad(), map(x2.to_vector<double>(), [](double e) { return 3.0 * std::exp(e); }), 1e-12);
  CHECK_THROWS_WITH_AS(backward(y2), doctest::Contains("already used and freed"), Error);
}

TEST_CASE("integer results never require grad") {
  Tensor x = random_leaf({2, 3}, 11);
  CHECK_FALSE(argmax(x, 1).requires_grad());
  auto [values, indices] = max(x, 1);
  CHECK(values.requires_grad());
  CHECK_FALSE(indices.requires_grad());
  CHECK_FALSE(gt(x, x).requires_grad());
  CHECK_FALSE(to_dtype(x, DType::i32).requires_grad());
  // A node with an integer and a floating output marks only the floating one.
  Tensor int_out = empty({2}, {.dtype = DType::i64});
  Tensor float_out = empty({2, 3}, {.dtype = DType::f64});
  autograd::record("two_outputs", {x}, {int_out, float_out}, [](const BackwardContext& ctx) {
    return Grads{ctx.grad(1)};
  });
  CHECK_FALSE(int_out.requires_grad());
  CHECK(int_out.grad_fn() == nullptr);
  CHECK(float_out.requires_grad());
  CHECK_THROWS_WITH_AS(zeros({2}, {.dtype = DType::i64}).set_requires_grad(true),
                       doctest::Contains("requires_grad: only floating tensors can require gradients, found i64[2] on cpu"), Error);
  CHECK_THROWS_WITH_AS(exp(x).set_requires_grad(false), doctest::Contains("cannot turn off gradients of a computed tensor"), Error);
}

TEST_CASE("outputs that receive no gradient get zeros; needs() says which inputs want one") {
  Tensor a = random_leaf({3}, 12);
  Tensor b = random_tensor({3}, 13);  // no grad
  Tensor o0 = empty({3}, {.dtype = DType::f64}), o1 = empty({2}, {.dtype = DType::f64});
  std::vector<bool> needs;
  std::vector<double> seen_grad1;
  autograd::record("multi", {a, b}, {o0, o1}, [&](const BackwardContext& ctx) {
    needs = {ctx.needs(0), ctx.needs(1)};
    seen_grad1 = ctx.grad(1).to_vector<double>();
    return Grads{mul(ctx.grad(0), 2.0), Tensor()};  // no gradient for b: allowed
  });
  CHECK(o0.impl()->output_nr == 0);
  CHECK(o1.impl()->output_nr == 1);
  backward(sum(o0));  // o1 is not used
  CHECK(needs == std::vector<bool>{true, false});
  CHECK(seen_grad1 == std::vector<double>{0.0, 0.0});
  check_close(a.grad(), {2, 2, 2}, 0.0);
}

TEST_CASE("the engine checks what backward functions return") {
  Tensor x = random_leaf({3}, 14);
  Tensor out = empty({3}, {.dtype = DType::f64});
  autograd::record("bad_shape", {x}, {out}, [](const BackwardContext&) {
    return Grads{zeros({2}, {.dtype = DType::f64})};
  });
  CHECK_THROWS_WITH_AS(backward(sum(out)),
                       doctest::Contains("backward of 'bad_shape': gradient of input 0 is f64[2] on cpu but the forward value was f64[3] on cpu"),
                       Error);
  Tensor out2 = empty({3}, {.dtype = DType::f64});
  autograd::record("missing", {x}, {out2}, [](const BackwardContext&) { return Grads{Tensor()}; });
  CHECK_THROWS_WITH_AS(backward(sum(out2)),
                       doctest::Contains("backward of 'missing': no gradient returned for input 0, which needs one"), Error);
  Tensor out3 = empty({3}, {.dtype = DType::f64});
  autograd::record("too_many", {x}, {out3}, [](const BackwardContext& ctx) { return Grads{ctx.grad(), ctx.grad()}; });
  CHECK_THROWS_WITH_AS(backward(sum(out3)), doctest::Contains("backward of 'too_many': returned 2 gradients for 1 inputs"), Error);
}

TEST_CASE("backward checks its arguments") {
  Tensor x = random_leaf({3}, 15);
  Tensor y = exp(x);
  CHECK_THROWS_WITH_AS(backward(y, ones({2}, {.dtype = DType::f64})),
                       doctest::Contains("backward: gradient f64[2] on cpu does not match root f64[3] on cpu"), Error);
  CHECK_THROWS_WITH_AS(backward(y, ones({3})), doctest::Contains("backward: gradient f32[3] on cpu does not match root f64[3] on cpu"), Error);
  CHECK_THROWS_WITH_AS(backward(zeros({1})), doctest::Contains("backward: the tensor does not require grad"), Error);
  CHECK_THROWS_WITH_AS(backward(Tensor()), doctest::Contains("backward: the tensor does not require grad"), Error);
  backward(y, from_vector<double>({1.0, 0.0, 2.0}, {3}));
  std::vector<double> xv = x.to_vector<double>();
  check_close(x.grad(), {std::exp(xv[0]), 0.0, 2.0 * std::exp(xv[2])}, 1e-12);
}

TEST_CASE("a deep chain runs without exhausting the stack") {
  Tensor x = scalar_tensor(0.25, {.dtype = DType::f64, .requires_grad = true});
  {
    Tensor y = x;
    for (int i = 0; i < 10000; ++i) y = (i % 2 == 0) ? add(y, 1.0) : mul(y, 1.0);
    CHECK(y.item<double>() == 5000.25);
    backward(y);
    CHECK(x.grad().item<double>() == 1.0);
  }  // the graph of 10000 nodes is destroyed here
  // A wide graph: one leaf feeding many nodes that join in one sum.
  Tensor w = random_leaf({8}, 16);
  Tensor total = zeros({8}, {.dtype = DType::f64});
  for (int i = 0; i < 2000; ++i) total = add(total, w);
  backward(sum(total));
  check_close(w.grad(), std::vector<double>(8, 2000.0), 0.0);
}

TEST_CASE("a graph of 300000 nodes is built, run and destroyed without recursion") {
  // Runs in a child process with the usual 8 MiB stack, so a stack overflow fails this test
  // instead of killing the test binary. Scalar ops never enter the thread pool, which the child
  // (one thread after fork) must not use.
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    rlimit limit{8u << 20, 8u << 20};
    setrlimit(RLIMIT_STACK, &limit);
    std::signal(SIGSEGV, SIG_DFL);  // die quietly: the parent reports the failure
    int code = 0;
    try {
      Tensor x = scalar_tensor(0.5, {.dtype = DType::f64, .requires_grad = true});
      {
        Tensor y = x;
        for (int i = 0; i < 300000; ++i) y = add(y, 1.0);
        backward(y);
        if (y.item<double>() != 300000.5) code = 2;
      }  // the chain is destroyed here
      if (x.grad().item<double>() != 1.0) code = 3;
    } catch (...) {
      code = 4;
    }
    _exit(code);
  }
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  INFO("child status ", status, std::string(WIFSIGNALED(status) ? " (killed by a signal: stack overflow?)" : ""));
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("gradients flow through mixed precision and views back to the leaf's dtype") {
  Tensor x = random_leaf({2, 3}, 17);
  Tensor y = sum(to_dtype(mul(to_dtype(transpose(x, 0, 1), DType::f32), 2.0), DType::f64));
  backward(y);
  CHECK(x.grad().dtype() == DType::f64);
  CHECK(x.grad().shape() == Shape{2, 3});
  check_close(x.grad(), std::vector<double>(6, 2.0), 0.0);
}

#pragma once
// Every differentiable op, for code that uses many of them (models, trainer, tests).
#include "ops/causal_conv1d.h"
#include "ops/concat.h"
#include "ops/cross_entropy.h"
#include "ops/elementwise.h"
#include "ops/embedding.h"
#include "ops/matmul.h"
#include "ops/reduce.h"
#include "ops/rms_norm.h"
#include "ops/selective_scan.h"
#include "ops/softmax.h"
#include "ops/views.h"

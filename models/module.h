#pragma once
// Module: the base of every model part. A module owns its parameters as Tensor members and
// registers them, and its child modules, by name; the registry gives the trainer what it needs
// (dotted names for checkpoints, weight-decay flags for AdamW, device and dtype moves) without
// knowing the concrete modules.
//
// The registry keeps pointers to the members it names, so a Module can be neither copied nor
// moved: hold children as members (or through std::unique_ptr when optional or counted).
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace scanline {

struct NamedParameter {
  std::string name;   // dotted path from the module asked, e.g. "layers.0.mixer.in_proj.weight"
  Tensor tensor;      // the parameter itself (a leaf requiring grad), not a copy
  bool weight_decay;  // false for norm weights, biases, A_log, D, the dt bias (DESIGN.md, "Training")
};

class Module {
 public:
  Module() = default;
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;
  Module(Module&&) = delete;
  Module& operator=(Module&&) = delete;

  // Every parameter of this module and its descendants, depth first in registration order (a
  // child's parameters appear where the child was registered).
  std::vector<NamedParameter> named_parameters() const;
  std::vector<Tensor> parameters() const;
  int64_t parameter_count() const;  // total number of elements

  // Replace every parameter by a copy on `device` / in `dtype` (a floating dtype), keeping names,
  // order, requires_grad and decay flags; gradients are dropped. Tensors obtained from the module
  // before the move keep pointing at the old copies, so move a model before building its optimizer.
  void to(Device device);
  void to(DType dtype);
  void zero_grad();  // drops every parameter's gradient

 protected:
  // Stores `value` in `slot` (a member of the derived module) as a leaf requiring grad and
  // records it under `name`. Returns slot. Names are unique among a module's parameters and
  // children and may not be empty.
  Tensor& register_parameter(const std::string& name, Tensor& slot, Tensor value, bool weight_decay);
  // Records `child` (a member of the derived module, or owned through a unique_ptr) under `name`;
  // "layers.3" style names are fine for numbered children.
  template <typename M>
  M& register_module(const std::string& name, M& child) {
    add_child(name, child);
    return child;
  }

 private:
  // One registry entry: a parameter slot or a child module, in registration order.
  struct Entry {
    std::string name;
    Tensor* parameter = nullptr;
    Module* child = nullptr;
    bool weight_decay = false;
  };
  void add_child(const std::string& name, Module& child);
  void check_new_name(const std::string& name) const;
  void collect(const std::string& prefix, std::vector<NamedParameter>& out) const;
  // Every parameter slot of the tree, for the in-place moves.
  void collect_slots(std::vector<Tensor*>& out);

  std::vector<Entry> entries_;
};

}  // namespace scanline

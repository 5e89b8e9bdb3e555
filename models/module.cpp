#include "models/module.h"

#include "core/error.h"

namespace scanline {

void Module::check_new_name(const std::string& name) const {
  SCANLINE_CHECK(!name.empty(), "Module: a parameter or child module needs a non-empty name");
  for (const Entry& e : entries_)
    SCANLINE_CHECK(e.name != name, "Module: the name '", name, "' is already registered in this module");
}

Tensor& Module::register_parameter(const std::string& name, Tensor& slot, Tensor value, bool weight_decay) {
  check_new_name(name);
  SCANLINE_CHECK(value.defined() && is_floating(value.dtype()), "Module: parameter '", name,
                 "' must be a floating tensor, found ", value.defined() ? describe(value) : "an undefined tensor");
  SCANLINE_CHECK(value.is_leaf(), "Module: parameter '", name, "' must be a leaf (detach it first), found ",
                 describe(value));
  value.set_requires_grad(true);
  slot = value;
  entries_.push_back({name, &slot, nullptr, weight_decay});
  return slot;
}

void Module::add_child(const std::string& name, Module& child) {
  check_new_name(name);
  SCANLINE_CHECK(&child != this, "Module: cannot register a module as its own child ('", name, "')");
  entries_.push_back({name, nullptr, &child, false});
}

void Module::collect(const std::string& prefix, std::vector<NamedParameter>& out) const {
  for (const Entry& e : entries_) {
    if (e.parameter)
      out.push_back({prefix + e.name, *e.parameter, e.weight_decay});
    else
      e.child->collect(prefix + e.name + ".", out);
  }
}

void Module::collect_slots(std::vector<Tensor*>& out) {
  for (Entry& e : entries_) {
    if (e.parameter)
      out.push_back(e.parameter);
    else
      e.child->collect_slots(out);
  }
}

std::vector<NamedParameter> Module::named_parameters() const {
  std::vector<NamedParameter> out;
  collect("", out);
  return out;
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (NamedParameter& p : named_parameters()) out.push_back(std::move(p.tensor));
  return out;
}

int64_t Module::parameter_count() const {
  int64_t n = 0;
  for (const NamedParameter& p : named_parameters()) n += p.tensor.numel();
  return n;
}

void Module::to(Device device) {
  std::vector<Tensor*> slots;
  collect_slots(slots);
  for (Tensor* slot : slots) {
    if (slot->device() == device) continue;
    Tensor moved = contiguous_copy(*slot, slot->dtype(), device);
    *slot = moved.set_requires_grad(true);
  }
}

void Module::to(DType dtype) {
  SCANLINE_CHECK(is_floating(dtype), "Module::to: parameters need a floating dtype, asked for ", dtype);
  std::vector<Tensor*> slots;
  collect_slots(slots);
  for (Tensor* slot : slots) {
    if (slot->dtype() == dtype) continue;
    Tensor converted = contiguous_copy(*slot, dtype, slot->device());
    *slot = converted.set_requires_grad(true);
  }
}

void Module::zero_grad() {
  for (NamedParameter& p : named_parameters()) p.tensor.zero_grad();
}

}  // namespace scanline

// Open-addressing flow table with backward-shift deletion.
#include "vpm/flow_table.hpp"

namespace vpm {

const char* flow_state_name(FlowState s) {
  switch (s) {
    case FlowState::waiting: return "waiting";
    case FlowState::syn_sent: return "syn_sent";
    case FlowState::syn_recv: return "syn_recv";
    case FlowState::pickup: return "pickup";
    case FlowState::established: return "established";
    case FlowState::fin_wait: return "fin_wait";
    case FlowState::closed: return "closed";
  }
  return "?";
}

FlowTable::FlowTable(uint32_t max_flows) : max_flows_(max_flows) {}

uint32_t FlowTable::hash(const FlowKey& key) {
  uint64_t w[5];
  std::memcpy(w, &key, sizeof w);
  uint64_t h = 0x243f6a8885a308d3ull;
  for (uint64_t x : w) {
    h ^= x;
    h *= 0x9e3779b97f4a7c15ull;
    h ^= h >> 32;
  }
  return static_cast<uint32_t>(h) | 1;  // never 0, which marks an empty slot
}

Flow* FlowTable::find(const FlowKey& key) {
  if (size_ == 0) return nullptr;
  uint32_t tag = hash(key);
  for (size_t i = tag & mask_;; i = (i + 1) & mask_) {
    if (tags_[i] == 0) return nullptr;
    if (tags_[i] == tag && flows_[i].key == key) return &flows_[i];
  }
}

Flow* FlowTable::insert(const FlowKey& key) {
  if (size_ >= max_flows_) return nullptr;
  if ((size_ + 1) * 2 > tags_.size()) grow();
  uint32_t tag = hash(key);
  size_t i = tag & mask_;
  while (tags_[i]) i = (i + 1) & mask_;
  tags_[i] = tag;
  flows_[i] = Flow{};
  flows_[i].key = key;
  ++size_;
  return &flows_[i];
}

void FlowTable::grow() {
  size_t cap = tags_.empty() ? 64 : tags_.size() * 2;
  std::vector<uint32_t> old_tags(cap, 0);
  std::vector<Flow> old_flows(cap);
  old_tags.swap(tags_);
  old_flows.swap(flows_);
  mask_ = cap - 1;
  for (size_t j = 0; j < old_tags.size(); ++j) {
    if (!old_tags[j]) continue;
    size_t i = old_tags[j] & mask_;
    while (tags_[i]) i = (i + 1) & mask_;
    tags_[i] = old_tags[j];
    flows_[i] = old_flows[j];
  }
}

void FlowTable::erase(Flow* flow) { erase_at(static_cast<size_t>(flow - flows_.data())); }

void FlowTable::erase_at(size_t i) {
  // Backward shift: pull later members of the probe run into the hole.
  size_t hole = i;
  for (size_t j = (i + 1) & mask_; tags_[j]; j = (j + 1) & mask_) {
    size_t home = tags_[j] & mask_;
    // Move j into the hole unless its home lies cyclically in (hole, j].
    bool home_after_hole = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
    if (home_after_hole) continue;
    tags_[hole] = tags_[j];
    flows_[hole] = flows_[j];
    hole = j;
  }
  tags_[hole] = 0;
  --size_;
}

}  // namespace vpm

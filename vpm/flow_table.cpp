// Open-addressing flow table with backward-shift deletion.
#include "vpm/flow_table.hpp"

namespace vpm {

const char* flow_state_name(FlowState s) {
  switch (s) {
    case FlowState::waiting:
      return "waiting";
    case FlowState::syn_sent:
      return "syn_sent";
    case FlowState::syn_recv:
      return "syn_recv";
    case FlowState::pickup:
      return "pickup";
    case FlowState::established:
      return "established";
    case FlowState::fin_wait:
      return "fin_wait";
    case FlowState::closed:
      return "closed";
  }
  return "?";
}

FlowTable::FlowTable(uint32_t max_flows) : max_flows_(max_flows) {}

Flow* FlowTable::find(const FlowKey& key) {
  if (size_ == 0) return nullptr;
  uint32_t tag = hash(key);
  for (size_t i = tag & mask_;; i = (i + 1) & mask_) {
    Flow& f = flows_[i];
    if (f.tag == 0) return nullptr;
    if (f.tag == tag && f.key == key) return &f;
  }
}

Flow* FlowTable::insert(const FlowKey& key) {
  if (size_ >= max_flows_) return nullptr;
  if ((size_ + 1) * 2 > flows_.size()) grow();
  uint32_t tag = hash(key);
  size_t i = tag & mask_;
  while (flows_[i].tag) i = (i + 1) & mask_;
  flows_[i] = Flow{};
  flows_[i].key = key;
  flows_[i].tag = tag;
  stats_[i] = FlowStats{};
  ++size_;
  return &flows_[i];
}

void FlowTable::grow() {
  size_t cap = flows_.empty() ? 64 : flows_.size() * 2;
  std::vector<Flow> old_flows(cap);
  std::vector<FlowStats> old_stats(cap);
  old_flows.swap(flows_);
  old_stats.swap(stats_);
  mask_ = cap - 1;
  for (size_t j = 0; j < old_flows.size(); ++j) {
    if (!old_flows[j].tag) continue;
    size_t i = old_flows[j].tag & mask_;
    while (flows_[i].tag) i = (i + 1) & mask_;
    flows_[i] = old_flows[j];
    stats_[i] = old_stats[j];
  }
}

void FlowTable::erase(Flow* flow) { erase_at(index(*flow)); }

void FlowTable::erase_at(size_t i) {
  // Backward shift: pull later members of the probe run into the hole.
  size_t hole = i;
  for (size_t j = (i + 1) & mask_; flows_[j].tag; j = (j + 1) & mask_) {
    size_t home = flows_[j].tag & mask_;
    // Move j into the hole unless its home lies cyclically in (hole, j].
    bool home_after_hole = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
    if (home_after_hole) continue;
    flows_[hole] = flows_[j];
    stats_[hole] = stats_[j];
    hole = j;
  }
  flows_[hole].tag = 0;
  --size_;
}

}  // namespace vpm

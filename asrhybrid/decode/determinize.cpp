// Pruned lattice determinization, compiled: the algorithm asrhybrid/decode/determinize.py describes
// (its module doc is the specification; that module builds the input and reads the result).
//
// The subset construction of Kaldi's lattice determinization over a decoder's state-level lattice. An element
// of an output state is (input state, graph cost, acoustic cost, residual string of transition ids); the
// epsilon closure keeps one element per input state, the best. Strings live in a repository (a trie): a
// string is the id of its last node, so appending a transition id is one hash look-up and two strings are
// equal exactly when their ids are; only the removal of a common prefix rebuilds strings, as in Kaldi.
// Output states are expanded best first by the exact cost through to the end, those beyond the beam
// dropped, and at most max_states expanded.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <queue>
#include <stdexcept>
#include <unordered_map>
#include <utility>
#include <vector>

namespace py = pybind11;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kQuantum = 1.0 / 1024;  // residual weights closer than this are one weight (Kaldi's delta)

// Strings of transition ids as nodes of a trie; node 0 is the empty string.
class StringRepository {
 public:
  StringRepository() : parent_{-1}, label_{0}, depth_{0} {}

  int32_t Append(int32_t s, int32_t tid) {
    uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(s)) << 32) | static_cast<uint32_t>(tid);
    auto it = children_.find(key);
    if (it != children_.end()) return it->second;
    int32_t id = static_cast<int32_t>(parent_.size());
    parent_.push_back(s);
    label_.push_back(tid);
    depth_.push_back(depth_[s] + 1);
    children_.emplace(key, id);
    return id;
  }

  int32_t Depth(int32_t s) const { return depth_[s]; }

  int32_t Ancestor(int32_t s, int32_t depth) const {
    while (depth_[s] > depth) s = parent_[s];
    return s;
  }

  // The length of the longest common prefix of the strings.
  int32_t CommonPrefix(std::vector<int32_t> strings) const {
    int32_t n = std::numeric_limits<int32_t>::max();
    for (int32_t s : strings) n = std::min(n, depth_[s]);
    for (int32_t &s : strings) s = Ancestor(s, n);
    while (n > 0) {
      bool same = true;
      for (int32_t s : strings) same = same && s == strings[0];
      if (same) break;
      for (int32_t &s : strings) s = parent_[s];
      --n;
    }
    return n;
  }

  // The transition ids of a string, first to last.
  std::vector<int32_t> Labels(int32_t s) const {
    std::vector<int32_t> out(depth_[s]);
    for (int32_t i = depth_[s] - 1; i >= 0; --i, s = parent_[s]) out[i] = label_[s];
    return out;
  }

  // The string without its first n transition ids.
  int32_t RemovePrefix(int32_t s, int32_t n) {
    if (n == 0) return s;
    std::vector<int32_t> labels = Labels(s);
    int32_t out = 0;
    for (size_t i = n; i < labels.size(); ++i) out = Append(out, labels[i]);
    return out;
  }

 private:
  std::vector<int32_t> parent_, label_, depth_;
  std::unordered_map<uint64_t, int32_t> children_;
};

struct Element {
  double graph, acoustic;
  int32_t string;
  double Cost() const { return graph + acoustic; }
};

using Subset = std::vector<std::pair<int32_t, Element>>;  // sorted by input state

struct SubsetKey {
  std::vector<int64_t> values;  // per element: state, quantized graph, quantized acoustic, string
  bool operator==(const SubsetKey &other) const { return values == other.values; }
};

struct SubsetKeyHash {
  size_t operator()(const SubsetKey &key) const {
    uint64_t h = 1469598103934665603ull;
    for (int64_t v : key.values) h = (h ^ static_cast<uint64_t>(v)) * 1099511628211ull;
    return static_cast<size_t>(h);
  }
};

struct Lattice {  // the input, arcs grouped by source state (CSR)
  int32_t num_states;
  std::vector<int32_t> first;  // arcs of state s: [first[s], first[s + 1])
  std::vector<int32_t> dst, word, tid;
  std::vector<double> graph, acoustic, final_graph, final_acoustic;
};

class Determinizer {
 public:
  Determinizer(Lattice lat, double beam, int64_t max_states) : lat_(std::move(lat)), beam_(beam), max_states_(max_states) {}

  py::dict Run();

 private:
  bool Prepare();  // order, costs to the end, arcs outside the beam dropped; false: no path
  void Closure(std::unordered_map<int32_t, Element> *elements, double base);
  double Heuristic(const Subset &subset) const;
  int32_t AddSubset(Subset subset, double forward, bool *added);

  Lattice lat_;
  double beam_, limit_ = kInf, best_total_ = kInf;
  int64_t max_states_;
  std::vector<int32_t> position_;
  std::vector<double> to_end_;
  std::vector<char> keep_;  // per arc: on a path within the beam
  StringRepository strings_;
  std::unordered_map<SubsetKey, int32_t, SubsetKeyHash> ids_;
  std::vector<Subset> subsets_;
  std::vector<double> forward_;
};

bool Determinizer::Prepare() {
  const int32_t n = lat_.num_states;
  std::vector<int32_t> indegree(n, 0), order;
  for (int32_t d : lat_.dst) ++indegree[d];
  std::vector<int32_t> ready;
  for (int32_t s = 0; s < n; ++s)
    if (indegree[s] == 0) ready.push_back(s);
  while (!ready.empty()) {
    int32_t s = ready.back();
    ready.pop_back();
    order.push_back(s);
    for (int32_t i = lat_.first[s]; i < lat_.first[s + 1]; ++i)
      if (--indegree[lat_.dst[i]] == 0) ready.push_back(lat_.dst[i]);
  }
  if (static_cast<int32_t>(order.size()) != n)
    throw std::invalid_argument("the lattice has a cycle (a decoder's lattices are acyclic)");
  position_.assign(n, 0);
  for (int32_t i = 0; i < n; ++i) position_[order[i]] = i;
  to_end_.assign(n, kInf);
  for (int32_t s = 0; s < n; ++s) to_end_[s] = lat_.final_graph[s] + lat_.final_acoustic[s];
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    int32_t s = *it;
    for (int32_t i = lat_.first[s]; i < lat_.first[s + 1]; ++i)
      to_end_[s] = std::min(to_end_[s], lat_.graph[i] + lat_.acoustic[i] + to_end_[lat_.dst[i]]);
  }
  if (n == 0 || to_end_[0] == kInf) return false;
  best_total_ = to_end_[0];
  limit_ = best_total_ + beam_;
  std::vector<double> from_start(n, kInf);
  from_start[0] = 0.0;
  for (int32_t s : order)
    for (int32_t i = lat_.first[s]; i < lat_.first[s + 1]; ++i)
      from_start[lat_.dst[i]] =
          std::min(from_start[lat_.dst[i]], from_start[s] + lat_.graph[i] + lat_.acoustic[i]);
  keep_.assign(lat_.dst.size(), 0);
  for (int32_t s = 0; s < n; ++s)
    for (int32_t i = lat_.first[s]; i < lat_.first[s + 1]; ++i)
      keep_[i] = from_start[s] + lat_.graph[i] + lat_.acoustic[i] + to_end_[lat_.dst[i]] <= limit_;
  return true;
}

void Determinizer::Closure(std::unordered_map<int32_t, Element> *elements, double base) {
  using Item = std::pair<int32_t, int32_t>;  // (topological position, state)
  std::priority_queue<Item, std::vector<Item>, std::greater<Item>> heap;
  for (const auto &kv : *elements) heap.emplace(position_[kv.first], kv.first);
  std::vector<int32_t> done;
  while (!heap.empty()) {
    int32_t s = heap.top().second;
    heap.pop();
    if (!done.empty() && done.back() == s) continue;  // popped in order: a repeat follows its first
    done.push_back(s);
    const Element e = elements->at(s);
    for (int32_t i = lat_.first[s]; i < lat_.first[s + 1]; ++i) {
      int32_t d = lat_.dst[i];
      if (!keep_[i] || lat_.word[i] != 0) continue;
      Element cand{e.graph + lat_.graph[i], e.acoustic + lat_.acoustic[i], e.string};
      if (base + cand.Cost() + to_end_[d] > limit_) continue;
      if (lat_.tid[i] != 0) cand.string = strings_.Append(e.string, lat_.tid[i]);
      auto it = elements->find(d);
      if (it == elements->end()) {
        elements->emplace(d, cand);
        heap.emplace(position_[d], d);
      } else if (cand.Cost() < it->second.Cost()) {
        it->second = cand;
        heap.emplace(position_[d], d);
      }
    }
  }
}

double Determinizer::Heuristic(const Subset &subset) const {
  double h = kInf;
  for (const auto &kv : subset) h = std::min(h, kv.second.Cost() + to_end_[kv.first]);
  return h;
}

int32_t Determinizer::AddSubset(Subset subset, double forward, bool *added) {
  SubsetKey key;
  key.values.reserve(4 * subset.size());
  for (const auto &kv : subset) {
    key.values.push_back(kv.first);
    key.values.push_back(static_cast<int64_t>(std::nearbyint(kv.second.graph / kQuantum)));
    key.values.push_back(static_cast<int64_t>(std::nearbyint(kv.second.acoustic / kQuantum)));
    key.values.push_back(kv.second.string);
  }
  auto it = ids_.find(key);
  *added = it == ids_.end();
  if (!*added) return it->second;
  int32_t id = static_cast<int32_t>(subsets_.size());
  ids_.emplace(std::move(key), id);
  subsets_.push_back(std::move(subset));
  forward_.push_back(forward);
  return id;
}

template <typename T>
py::array_t<T> ToArray(const std::vector<T> &v) {
  py::array_t<T> out(static_cast<py::ssize_t>(v.size()));
  std::copy(v.begin(), v.end(), out.mutable_data());
  return out;
}

py::dict Determinizer::Run() {
  // the output: arcs (source, destination, word, graph, acoustic, string) and finals (state, graph, acoustic,
  // string), strings as ragged transition ids
  std::vector<int32_t> arc_src, arc_dst, arc_word, arc_splits{0}, arc_tids, final_state, final_splits{0},
      final_tids;
  std::vector<double> arc_graph, arc_acoustic, final_graph, final_acoustic;
  int64_t pruned = 0, expanded_count = 0;
  bool hit_max = false;
  auto add_string = [&](int32_t s, std::vector<int32_t> *splits, std::vector<int32_t> *tids) {
    std::vector<int32_t> labels = strings_.Labels(s);
    tids->insert(tids->end(), labels.begin(), labels.end());
    splits->push_back(static_cast<int32_t>(tids->size()));
  };

  if (Prepare()) {
    std::unordered_map<int32_t, Element> start{{0, Element{0.0, 0.0, 0}}};
    Closure(&start, 0.0);
    Subset first(start.begin(), start.end());
    std::sort(first.begin(), first.end(), [](const auto &x, const auto &y) { return x.first < y.first; });
    bool added;
    AddSubset(std::move(first), 0.0, &added);
    using Item = std::pair<double, int32_t>;  // (priority, output state)
    std::priority_queue<Item, std::vector<Item>, std::greater<Item>> queue;
    queue.emplace(Heuristic(subsets_[0]), 0);
    std::vector<char> expanded;
    while (!queue.empty()) {
      auto [priority, sid] = queue.top();
      queue.pop();
      if (static_cast<size_t>(sid) < expanded.size() && expanded[sid]) continue;
      if (priority > best_total_ + beam_) {
        ++pruned;
        continue;
      }
      if (expanded_count >= max_states_) {
        hit_max = true;
        break;
      }
      if (expanded.size() < subsets_.size()) expanded.resize(subsets_.size(), 0);
      expanded[sid] = 1;
      ++expanded_count;
      const Subset elements = subsets_[sid];  // a copy: subsets_ grows below
      const double forward = forward_[sid];
      // the final weight: the best element's with its state's final weight
      const Element *best_final = nullptr;
      double best_final_cost = kInf;
      int32_t best_final_state = -1;
      for (const auto &kv : elements) {
        double c = kv.second.Cost() + lat_.final_graph[kv.first] + lat_.final_acoustic[kv.first];
        if (c < best_final_cost) best_final_cost = c, best_final = &kv.second, best_final_state = kv.first;
      }
      if (best_final != nullptr && forward + best_final_cost <= limit_) {
        final_state.push_back(sid);
        final_graph.push_back(best_final->graph + lat_.final_graph[best_final_state]);
        final_acoustic.push_back(best_final->acoustic + lat_.final_acoustic[best_final_state]);
        add_string(best_final->string, &final_splits, &final_tids);
      }
      // the arcs with words, grouped by word; each word's destinations with their best element
      std::vector<std::pair<int32_t, std::unordered_map<int32_t, Element>>> by_word;
      std::unordered_map<int32_t, size_t> word_index;
      for (const auto &kv : elements) {
        const Element &e = kv.second;
        for (int32_t i = lat_.first[kv.first]; i < lat_.first[kv.first + 1]; ++i) {
          int32_t d = lat_.dst[i];
          if (!keep_[i] || lat_.word[i] == 0) continue;
          Element cand{e.graph + lat_.graph[i], e.acoustic + lat_.acoustic[i], e.string};
          if (forward + cand.Cost() + to_end_[d] > limit_) continue;
          if (lat_.tid[i] != 0) cand.string = strings_.Append(e.string, lat_.tid[i]);
          auto w = word_index.find(lat_.word[i]);
          if (w == word_index.end()) {
            w = word_index.emplace(lat_.word[i], by_word.size()).first;
            by_word.emplace_back(lat_.word[i], std::unordered_map<int32_t, Element>{});
          }
          auto &next = by_word[w->second].second;
          auto old = next.find(d);
          if (old == next.end())
            next.emplace(d, cand);
          else if (cand.Cost() < old->second.Cost())
            old->second = cand;
        }
      }
      std::sort(by_word.begin(), by_word.end(), [](const auto &x, const auto &y) { return x.first < y.first; });
      for (auto &[word, next] : by_word) {
        Closure(&next, forward);
        // the arc takes the best element's weight and the strings' common prefix; the subset keeps the rest
        Subset subset(next.begin(), next.end());
        std::sort(subset.begin(), subset.end(), [](const auto &x, const auto &y) { return x.first < y.first; });
        const Element *best = &subset[0].second;
        std::vector<int32_t> strings;
        for (const auto &kv : subset) {
          if (kv.second.Cost() < best->Cost()) best = &kv.second;
          strings.push_back(kv.second.string);
        }
        const Element weight = *best;
        int32_t n = strings_.CommonPrefix(strings);
        for (auto &kv : subset) {
          kv.second.graph -= weight.graph;
          kv.second.acoustic -= weight.acoustic;
          kv.second.string = strings_.RemovePrefix(kv.second.string, n);
        }
        double f = forward + weight.Cost();
        int32_t target = AddSubset(std::move(subset), f, &added);
        if (!added && f < forward_[target]) forward_[target] = f;
        queue.emplace(forward_[target] + Heuristic(subsets_[target]), target);
        arc_src.push_back(sid);
        arc_dst.push_back(target);
        arc_word.push_back(word);
        arc_graph.push_back(weight.graph);
        arc_acoustic.push_back(weight.acoustic);
        add_string(strings_.Ancestor(weight.string, n), &arc_splits, &arc_tids);
      }
    }
  }
  py::dict out;
  out["arc_src"] = ToArray(arc_src);
  out["arc_dst"] = ToArray(arc_dst);
  out["arc_word"] = ToArray(arc_word);
  out["arc_graph"] = ToArray(arc_graph);
  out["arc_acoustic"] = ToArray(arc_acoustic);
  out["arc_splits"] = ToArray(arc_splits);
  out["arc_tids"] = ToArray(arc_tids);
  out["final_state"] = ToArray(final_state);
  out["final_graph"] = ToArray(final_graph);
  out["final_acoustic"] = ToArray(final_acoustic);
  out["final_splits"] = ToArray(final_splits);
  out["final_tids"] = ToArray(final_tids);
  out["pruned"] = pruned;
  out["hit_max_states"] = hit_max;
  return out;
}

template <typename T>
using In = py::array_t<T, py::array::c_style | py::array::forcecast>;

py::dict Determinize(int32_t num_states, In<int32_t> src, In<int32_t> dst, In<int32_t> word, In<double> graph,
                     In<double> acoustic, In<int32_t> tid, In<int32_t> final_state, In<double> final_graph,
                     In<double> final_acoustic, double beam, int64_t max_states) {
  const py::ssize_t m = src.size();
  if (dst.size() != m || word.size() != m || graph.size() != m || acoustic.size() != m || tid.size() != m)
    throw std::invalid_argument("the arc arrays differ in length");
  if (final_graph.size() != final_state.size() || final_acoustic.size() != final_state.size())
    throw std::invalid_argument("the final arrays differ in length");
  Lattice lat;
  lat.num_states = num_states;
  lat.first.assign(num_states + 1, 0);
  const int32_t *s = src.data();
  for (py::ssize_t i = 0; i < m; ++i) {
    if (s[i] < 0 || s[i] >= num_states || dst.data()[i] < 0 || dst.data()[i] >= num_states)
      throw std::invalid_argument("an arc's state is out of range");
    ++lat.first[s[i] + 1];
  }
  for (int32_t k = 0; k < num_states; ++k) lat.first[k + 1] += lat.first[k];
  lat.dst.resize(m), lat.word.resize(m), lat.tid.resize(m), lat.graph.resize(m), lat.acoustic.resize(m);
  std::vector<int32_t> fill(lat.first.begin(), lat.first.end() - 1);
  for (py::ssize_t i = 0; i < m; ++i) {  // stable: a state's arcs keep their order
    int32_t j = fill[s[i]]++;
    lat.dst[j] = dst.data()[i], lat.word[j] = word.data()[i], lat.tid[j] = tid.data()[i];
    lat.graph[j] = graph.data()[i], lat.acoustic[j] = acoustic.data()[i];
  }
  lat.final_graph.assign(num_states, kInf);
  lat.final_acoustic.assign(num_states, 0.0);
  for (py::ssize_t i = 0; i < final_state.size(); ++i) {
    int32_t f = final_state.data()[i];
    if (f < 0 || f >= num_states) throw std::invalid_argument("a final state is out of range");
    lat.final_graph[f] = final_graph.data()[i];
    lat.final_acoustic[f] = final_acoustic.data()[i];
  }
  return Determinizer(std::move(lat), beam, max_states).Run();
}

}  // namespace

PYBIND11_MODULE(_determinize, m) {
  m.doc() = "Pruned lattice determinization (asrhybrid.decode.determinize's compiled core)";
  m.def("determinize", &Determinize, py::arg("num_states"), py::arg("src"), py::arg("dst"), py::arg("word"),
        py::arg("graph"), py::arg("acoustic"), py::arg("tid"), py::arg("final_state"), py::arg("final_graph"),
        py::arg("final_acoustic"), py::arg("beam"), py::arg("max_states"));
}

/* pair_style mlip: mlip models in LAMMPS through an AOTInductor package.
 *
 * Part of the mlip LAMMPS plugin (GPL-2.0-or-later, see LICENSE in this folder). */

#ifndef LMP_PAIR_MLIP_H
#define LMP_PAIR_MLIP_H

#include "pair.h"

#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace torch::inductor {
class AOTIModelPackageLoader;
}
namespace at {
class Tensor;
}

namespace LAMMPS_NS {

class PairMLIP : public Pair {
 public:
  PairMLIP(class LAMMPS *);
  ~PairMLIP() override;
  void compute(int, int) override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  double init_one(int, int) override;
  int pack_forward_comm(int, int *, double *, int, int *) override;
  void unpack_forward_comm(int, int, double *) override;
  int pack_reverse_comm(int, int, double *) override;
  void unpack_reverse_comm(int, int *, double *) override;
  // "uncertainty": the per-atom force uncertainty [eV/Å] of a package whose model has one
  // (read it with `fix ID all pair N mlip uncertainty 0`)
  void *extract_peratom(const char *, int &) override;

  // The ghost exchange the package calls between layers (operators mlip_lammps::ghost_exchange
  // and ghost_exchange_backward), on the pair style whose compute() is running the package.
  static PairMLIP *computing;
  at::Tensor exchange_forward(const at::Tensor &x, int64_t computed, int64_t total);
  at::Tensor exchange_backward(const at::Tensor &grad, int64_t computed);

 private:
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader;         // active sets
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader_full;    // every node
  std::string package_path;
  std::vector<std::string> elements;    // the model's elements, species order
  std::vector<int> species_of_type;     // LAMMPS type (1..ntypes) -> species index
  double cutoff = 0.0;                  // model cutoff [Å]
  int hops = 0;                         // message-passing hops of the model
  int exchange_width = 0;               // most features per atom one ghost exchange carries
  bool double_precision = true;         // package dtype float64 (else float32)
  std::string device = "cpu";           // package device
  bool has_uncertainty = false;         // the package returns a per-node force uncertainty
  double *uncertainty = nullptr;        // per local atom, of the last compute() [eV/Å]
  int uncertainty_size = 0;             // allocated length of `uncertainty`

  // graph of one call, rebuilt every step (nodes are atoms by ID: the images of one atom
  // on this rank are one node, reached through edges that carry the image's vector)
  std::unordered_map<tagint, int> node_of_tag;
  std::vector<int> node_atom;     // node -> representative atom (local atom where owned; -1: padding)
  std::vector<int> node_depth;    // node -> 0 for local atoms, 1 for ghosts (-1: padding)
  std::vector<int> pair_atoms;    // per kept pair: receiver atom, sender atom
  std::vector<int> pair_nodes;    // per kept pair: receiver node, sender node
  std::vector<double> pair_vectors;  // per kept pair: x[sender] - x[receiver]
  int64_t local_pairs = 0;           // the kept pairs between two local atoms (the first ones)

  // ghost exchange: one row of `exchange_stride` values per local and ghost atom
  std::vector<double> exchange_buffer;
  int exchange_stride = 0;

  void allocate();
  void build_graph(int nlocal);
};

}    // namespace LAMMPS_NS

#endif

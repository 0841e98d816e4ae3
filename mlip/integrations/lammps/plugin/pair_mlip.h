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

 private:
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader;
  std::string package_path;
  std::vector<std::string> elements;    // the model's elements, species order
  std::vector<int> species_of_type;     // LAMMPS type (1..ntypes) -> species index
  double cutoff = 0.0;                  // model cutoff [Å]
  int hops = 0;                         // message-passing hops of the model
  bool double_precision = true;         // package dtype float64 (else float32)
  std::string device = "cpu";           // package device
  double ghost_cutoff_set = -1.0;       // the ghost cutoff this style set (not the user)

  // graph of one call, rebuilt every step (nodes are atoms by ID: the images of one atom
  // on this rank are one node, reached through edges that carry the image's vector)
  std::unordered_map<tagint, int> node_of_tag;
  std::vector<int> node_atom;     // node -> representative atom (local atom where owned; -1: padding)
  std::vector<int> node_depth;    // node -> hops from the nearest local atom
  std::vector<int> pair_atoms;    // per kept pair: receiver atom, sender atom
  std::vector<int> pair_nodes;    // per kept pair: receiver node, sender node
  std::vector<double> pair_vectors;  // per kept pair: x[sender] - x[receiver]
  std::vector<int> pair_depths;      // per kept pair: 2 x receiver depth + (sender - receiver depth)

  void allocate();
  void build_graph(int nlocal);
};

}    // namespace LAMMPS_NS

#endif

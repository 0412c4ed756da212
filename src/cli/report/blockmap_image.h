// The block-map picture of `sla demo`: for a few heads side by side, query blocks (rows) x key blocks (columns)
// coloured critical / marginal / negligible, scaled up to be readable, with a labelled legend strip.
#pragma once

#include <string>
#include <vector>

#include "formats/png_writer.h"
#include "workload/reference_attention.h"

namespace sla_cli {

// Colours of the three classes (also used by the legend).
constexpr Rgb kCriticalColour{215, 48, 39};
constexpr Rgb kMarginalColour{171, 217, 233};
constexpr Rgb kNegligibleColour{69, 69, 69};

// Renders batch 0 of the first `max_heads` heads. `labels` names each head (may be shorter than the head count).
RgbImage render_block_map(const BlockClasses& classes, int64_t heads, const std::vector<std::string>& labels,
                          int max_heads = 6);

}  // namespace sla_cli

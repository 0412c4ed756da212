// See blockmap_image.h.
#include "report/blockmap_image.h"

#include <algorithm>
#include <array>

#include "report/bitmap_font.h"

namespace sla_cli {

namespace {

constexpr Rgb kBackground{255, 255, 255};
constexpr Rgb kText{30, 30, 30};
constexpr int kTargetPanel = 320;  // pixels per panel side, roughly
constexpr int kMargin = 16;
constexpr int kTextScale = 2;  // font pixels per bitmap pixel

struct LegendEntry {
  Rgb colour;
  const char* name;
};
constexpr LegendEntry kLegend[] = {{kCriticalColour, "CRITICAL: EXACT SPARSE ATTENTION"},
                                   {kMarginalColour, "MARGINAL: LINEAR BRANCH"},
                                   {kNegligibleColour, "NEGLIGIBLE: SKIPPED"}};
constexpr const char* kAxes = "ROWS: QUERY BLOCKS, COLUMNS: KEY BLOCKS";

enum BlockClass : uint8_t { kMarginal = 0, kCritical = 1, kNegligible = 2 };

// Class of every (query block, key block) of one (b,h).
std::vector<uint8_t> classify(const BlockClasses& c, int64_t bh) {
  std::vector<uint8_t> cls(static_cast<std::size_t>(c.q_blocks * c.k_blocks), kMarginal);
  auto mark = [&](const std::vector<int32_t>& lut, const std::vector<int32_t>& count, int64_t width, uint8_t v) {
    if (width == 0) return;
    for (int64_t i = 0; i < c.q_blocks; ++i) {
      const int64_t row = bh * c.q_blocks + i;
      const int64_t n = std::min<int64_t>(count[row], width);
      for (int64_t t = 0; t < n; ++t) {
        const int32_t j = lut[row * width + t];
        if (j >= 0 && j < c.k_blocks) cls[i * c.k_blocks + j] = v;
      }
    }
  };
  mark(c.negl_lut, c.negl_count, c.negligible, kNegligible);
  mark(c.lut, c.count, c.critical, kCritical);
  return cls;
}

// Blends the class colours of the blocks that one pixel covers (when blocks outnumber pixels).
Rgb blend(const std::array<int64_t, 3>& counts) {
  const std::array<Rgb, 3> colour = {kMarginalColour, kCriticalColour, kNegligibleColour};
  const int64_t total = counts[0] + counts[1] + counts[2];
  double r = 0, g = 0, b = 0;
  for (int k = 0; k < 3; ++k) {
    const double w = total > 0 ? static_cast<double>(counts[k]) / total : 0;
    r += w * colour[k].r;
    g += w * colour[k].g;
    b += w * colour[k].b;
  }
  return {static_cast<uint8_t>(r + 0.5), static_cast<uint8_t>(g + 0.5), static_cast<uint8_t>(b + 0.5)};
}

}  // namespace

RgbImage render_block_map(const BlockClasses& c, int64_t heads, const std::vector<std::string>& labels, int max_heads) {
  const int panels = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(heads, max_heads)));
  const int64_t nmax = std::max(c.q_blocks, c.k_blocks);
  // Either enlarge each block to `zoom` pixels or shrink `shrink` blocks into one pixel.
  const int zoom = nmax >= kTargetPanel ? 1 : static_cast<int>(std::min<int64_t>(16, kTargetPanel / nmax));
  const int64_t shrink = nmax > kTargetPanel ? (nmax + kTargetPanel - 1) / kTargetPanel : 1;
  const int pw = static_cast<int>((c.k_blocks + shrink - 1) / shrink) * zoom;
  const int ph = static_cast<int>((c.q_blocks + shrink - 1) / shrink) * zoom;
  const int text_h = kFontHeight * kTextScale;
  const int title_h = text_h + 8;
  const int legend_h = 4 * (text_h + 8) + 8;

  int legend_w = text_width(kAxes, kTextScale);
  for (const LegendEntry& e : kLegend) legend_w = std::max(legend_w, text_h + 8 + text_width(e.name, kTextScale));
  const int width = std::max(kMargin + panels * (std::max(pw, 120) + kMargin), 2 * kMargin + legend_w);
  const int height = kMargin + title_h + ph + kMargin + legend_h;
  RgbImage img(width, height, kBackground);

  for (int p = 0; p < panels; ++p) {
    const int x0 = kMargin + p * (std::max(pw, 120) + kMargin);
    const int y0 = kMargin + title_h;
    const std::string label = p < static_cast<int>(labels.size()) ? labels[p] : "HEAD " + std::to_string(p);
    draw_text(img, x0, kMargin, label, kText, kTextScale);
    const std::vector<uint8_t> cls = classify(c, p);
    for (int64_t pi = 0; pi * shrink < c.q_blocks; ++pi) {
      for (int64_t pj = 0; pj * shrink < c.k_blocks; ++pj) {
        std::array<int64_t, 3> counts = {0, 0, 0};
        for (int64_t i = pi * shrink; i < std::min(c.q_blocks, (pi + 1) * shrink); ++i) {
          for (int64_t j = pj * shrink; j < std::min(c.k_blocks, (pj + 1) * shrink); ++j) {
            ++counts[cls[i * c.k_blocks + j]];
          }
        }
        img.fill_rect(x0 + static_cast<int>(pj) * zoom, y0 + static_cast<int>(pi) * zoom, zoom, zoom, blend(counts));
      }
    }
  }

  // Legend: a swatch and a name per class, then what the axes are.
  const int ly = kMargin + title_h + ph + kMargin;
  for (int e = 0; e < 3; ++e) {
    const int y = ly + e * (text_h + 8);
    img.fill_rect(kMargin, y, text_h, text_h, kLegend[e].colour);
    draw_text(img, kMargin + text_h + 8, y, kLegend[e].name, kText, kTextScale);
  }
  draw_text(img, kMargin, ly + 3 * (text_h + 8), kAxes, kText, kTextScale);
  return img;
}

}  // namespace sla_cli

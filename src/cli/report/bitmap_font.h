// A tiny built-in 5x7 pixel font (upper-case letters, digits, a little punctuation) so the block-map PNG can carry
// its own labels without a font library. Lower-case letters are drawn as upper case; unknown characters as blanks.
#pragma once

#include <string>

#include "formats/png_writer.h"

namespace sla_cli {

constexpr int kFontWidth = 5;
constexpr int kFontHeight = 7;
constexpr int kFontAdvance = 6;  // glyph width plus one pixel of spacing

// Draws `text` with its top-left corner at (x, y), each font pixel a `scale` x `scale` square.
void draw_text(RgbImage& image, int x, int y, const std::string& text, Rgb colour, int scale);
int text_width(const std::string& text, int scale);

}  // namespace sla_cli
